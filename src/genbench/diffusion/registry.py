"""The samplers the config names (``sampler=NAME``, conf/sampler/NAME.yaml), built from their settings."""

from __future__ import annotations

from genbench.diffusion.samplers import DEFAULT_SIGMA_MAX, DDIMSampler, DDPMSampler, Sampler
from genbench.diffusion.solvers import (DPMSolverPP2MSampler, Dopri5Sampler, EulerSampler, HeunSampler,
                                        MidpointSampler)  # fmt: skip

SAMPLER_CLASSES: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpmpp_2m": DPMSolverPP2MSampler,
    "euler": EulerSampler,
    "heun": HeunSampler,
    "midpoint": MidpointSampler,
    "dopri5": Dopri5Sampler,
}
SAMPLERS = tuple(SAMPLER_CLASSES)
# the settings only some samplers take: name -> the samplers that take it
OWN_SETTINGS = {"eta": ("ddim",), "rtol": ("dopri5",), "atol": ("dopri5",)}


def build_sampler(
    name: str,
    steps: int,
    eta: float | None = None,
    sigma_max: float | None = DEFAULT_SIGMA_MAX,
    rtol: float | None = None,
    atol: float | None = None,
) -> Sampler:
    """The sampler named by the config; ``eta`` belongs to DDIM only (the others' noise is fixed or absent),
    ``rtol`` and ``atol`` to dopri5."""
    if name not in SAMPLER_CLASSES:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    if sigma_max is not None and not float(sigma_max) > 0:
        raise ValueError(f"sigma_max must be > 0 (or null: start at the path's noisiest point), got {sigma_max}")
    sigma_max = None if sigma_max is None else float(sigma_max)
    given = {"eta": eta, "rtol": rtol, "atol": atol}
    kwargs = {}
    for key, value in given.items():
        if name in OWN_SETTINGS[key]:
            if value is not None:
                kwargs[key] = float(value)
        elif value not in (None, 0, 0.0) or (key != "eta" and value is not None):
            takers = " and ".join(OWN_SETTINGS[key])
            what = "its noise is fixed or absent" if key == "eta" else "it has fixed steps"
            raise ValueError(f"{key} applies only to {takers} ({name}: {what}), got {key}={value}")
    return SAMPLER_CLASSES[name](int(steps), sigma_max=sigma_max, **kwargs)
