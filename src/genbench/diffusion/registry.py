"""The samplers the config names (``sampler=NAME``, conf/sampler/NAME.yaml), built from their settings."""

from __future__ import annotations

from genbench.diffusion.samplers import DEFAULT_SIGMA_MAX, DDIMSampler, DDPMSampler, Sampler
from genbench.diffusion.solvers import DPMSolverPP2MSampler, EulerSampler, HeunSampler

# name -> (class, whether it takes eta)
SAMPLER_CLASSES: dict[str, tuple[type[Sampler], bool]] = {
    "ddpm": (DDPMSampler, False),
    "ddim": (DDIMSampler, True),
    "dpmpp_2m": (DPMSolverPP2MSampler, False),
    "euler": (EulerSampler, False),
    "heun": (HeunSampler, False),
}
SAMPLERS = tuple(SAMPLER_CLASSES)


def build_sampler(
    name: str, steps: int, eta: float | None = None, sigma_max: float | None = DEFAULT_SIGMA_MAX
) -> Sampler:
    """The sampler named by the config; ``eta`` belongs to DDIM only (the others' noise is fixed or absent)."""
    if name not in SAMPLER_CLASSES:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    cls, takes_eta = SAMPLER_CLASSES[name]
    if sigma_max is not None and not float(sigma_max) > 0:
        raise ValueError(f"sigma_max must be > 0 (or null: start at T-1), got {sigma_max}")
    sigma_max = None if sigma_max is None else float(sigma_max)
    if takes_eta:
        return cls(int(steps), eta=0.0 if eta is None else float(eta), sigma_max=sigma_max)
    if eta not in (None, 0, 0.0):
        raise ValueError(f"eta applies only to the ddim sampler ({name}'s noise is fixed or absent), got eta={eta}")
    return cls(int(steps), sigma_max=sigma_max)
