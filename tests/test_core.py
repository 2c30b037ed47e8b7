"""The iterative core (path x solver x space): today's diffusion is one configuration of it, bit for bit, and every
solver serves every path.

``tests/data/core_reference.pt`` holds images drawn by the samplers as they were before the core was split into
paths, solvers and spaces (commit 709249d, ``tests/data/make_core_reference.py``): the same network, schedule,
sampler and noise must give the same images, not close ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from genbench.diffusion import SAMPLERS, EDMPath, NoiseSchedule, Space, build_sampler, guided
from genbench.nets.unet import UNet
from genbench.noise import IndexedNoise

REFERENCE = Path(__file__).parent / "data" / "core_reference.pt"




@pytest.fixture(scope="module")
def reference():
    saved = torch.load(REFERENCE)
    net = UNet(image_channels=1, image_size=28, num_classes=10, base_channels=8, channel_mults=[1, 2],
               num_res_blocks=1, attention_levels=[1], attention_resolutions=None).eval()  # fmt: skip
    net.load_state_dict(saved["net"])
    return net, saved


def _case(key: str):
    kind, prediction, sampler, eta, sigma_max = key.split("-")
    name, steps = re.match(r"(dpmpp_2m|[a-z]+)(\d+)$", sampler).groups()
    literal = lambda text: None if text == "None" else float(text)  # noqa: E731
    return kind, prediction, name, int(steps), literal(eta[3:]), literal(sigma_max[4:])


def test_todays_diffusion_draws_the_same_images_bit_for_bit(reference):
    net, saved = reference
    assert len(saved["images"]) == 9
    for key, before in saved["images"].items():
        kind, prediction, name, steps, eta, sigma_max = _case(key)
        streams = IndexedNoise.range(7, 0, 4)
        noise = streams.randn(4, 1, 28, 28)
        with torch.no_grad():
            after = build_sampler(name, steps, eta, sigma_max)(guided(net, saved["labels"], 10, 2.0),
                                                               NoiseSchedule(1000, kind, prediction=prediction), noise,
                                                               generator=streams)  # fmt: skip
        assert torch.equal(after, before), f"{key}: max difference {(after - before).abs().max():.3g}"


def test_ode_solvers_converge_to_the_exact_flow_and_dopri5_is_closest():
    """On Gaussian data the probability-flow ODE's solution is known in closed form (``_target``). Every
    deterministic solver gets closer to it as its steps grow, on the VP and EDM paths, and dopri5 is within its
    tolerance of it."""
    torch.manual_seed(0)
    mean, std = 0.2, 0.3
    for path in (NoiseSchedule(1000, "cosine", prediction="v"), EDMPath(sigma_data=0.5)):
        noise = torch.randn(64, 1, 2, 2)
        target = _target(path, noise, mean, std)
        error = lambda sampler: float((_solve_exact(path, sampler, noise, mean, std) - target).abs().mean())  # noqa: E731
        for name in ("euler", "heun", "midpoint", "dpmpp_2m"):
            errors = [error(build_sampler(name, steps)) for steps in (4, 16, 64)]
            assert errors[2] < errors[1] < errors[0], (path.describe(), name, errors)
            if name != "euler":  # the second-order ones
                assert errors[2] < 5e-3, (path.describe(), name, errors)
        assert error(build_sampler("dopri5", 1, rtol=1e-6, atol=1e-6)) < 2e-3, path.describe()


def _target(path, noise, mean, std):
    """Where the exact probability-flow ODE takes ``noise`` started at the path's first point: for Gaussian data the
    flow is linear, x_0 = mean + std * (x_start - alpha mean) / sqrt(alpha^2 std^2 + sigma^2)."""
    first = path.grid(2).points[0]
    x = path.start(noise, path.grid(2))
    return mean + std * (x - first.alpha * mean) / (first.alpha**2 * std**2 + first.sigma**2) ** 0.5


def _solve_exact(path, sampler, noise, mean, std):
    """``sampler`` on ``path`` with the exact denoiser of N(mean, std^2) data in place of a network: the path's
    ``to_x0_eps`` is bypassed by a denoiser built straight from (alpha, sigma)."""
    sampler.clip_denoised = False

    def exact(x, point):
        a, s = point.alpha, point.sigma
        x0 = mean + a * std**2 / (a * a * std**2 + s * s) * (x - a * mean)
        return x0, (x - a * x0) / s

    class Plain(Space):
        def decode(self, states):
            return states

    sampler.denoiser = lambda model_fn, path, space: exact  # noqa: E731 - the exact denoiser, not a network's
    return sampler(lambda x, t: x, path, noise.double().float(), space=Plain())


def test_every_solver_runs_on_every_path():
    net = lambda x, t, labels=None: 0.1 * x  # noqa: E731
    for path in (NoiseSchedule(1000, "cosine", prediction="v"), NoiseSchedule(100, "linear"), EDMPath()):
        for name in SAMPLERS:
            images = build_sampler(name, 5)(lambda x, t: net(x, t), path, torch.randn(2, 1, 4, 4),
                                            torch.Generator().manual_seed(0))  # fmt: skip
            assert images.shape == (2, 1, 4, 4) and torch.isfinite(images).all(), (path.describe(), name)
            assert images.abs().max() <= 1, "the pixel space clips the output to the data range"


def test_edm_preconditioning_matches_karras_table_1():
    path = EDMPath(sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = path._coefficients(sigma)
    sd = 0.5
    torch.testing.assert_close(c_skip, sd**2 / (sigma**2 + sd**2))
    torch.testing.assert_close(c_out, sigma * sd / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(c_in, 1 / (sd**2 + sigma**2).sqrt())
    torch.testing.assert_close(c_noise, 1000 * sigma.log() / 4)
    # the grid: Karras eq. 5 from sigma_max to sigma_min, then 0
    taus = path.grid(4).taus
    assert taus[0] == pytest.approx(80.0) and taus[3] == pytest.approx(0.002) and taus[4] == 0.0


def test_edm_loss_weighting_gives_unit_variance_targets():
    """At every sigma the effective target (x_0 - c_skip x) / c_out has unit variance when the data's std is
    sigma_data (Karras et al. 2022 sec. 5): the loss weights every noise level alike."""
    torch.manual_seed(0)
    path = EDMPath(sigma_data=0.5)
    x0 = torch.randn(20000) * 0.5
    for sigma in (0.01, 0.5, 20.0):
        noisy = x0 + sigma * torch.randn_like(x0)
        c_skip, c_out, _, _ = (float(c) for c in path._coefficients(torch.tensor(sigma, dtype=torch.float64)))
        target = (x0 - c_skip * noisy) / c_out
        assert target.var().item() == pytest.approx(1.0, rel=0.05)


def _tiny_model(path_override: list[str], model: str = "diffusion"):
    from hydra import compose, initialize_config_dir

    from genbench.cli import CONF_DIR
    from genbench.models import build_model

    overrides = [f"model={model}", *path_override, "model.net.base_channels=8", "model.net.channel_mults=[1,2]",
                 "model.net.attention_levels=[1]"]  # fmt: skip
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=overrides)
    return build_model(cfg.model, (1, 8, 8), 3, ["a", "b", "c"])


def assert_learns_and_samples(model) -> None:
    """A few dozen steps on a fixed batch lower the path's own loss, and every solver samples from the result with
    the NFE it reports (shared by the diffusion, flow and latent tests)."""
    labels = torch.arange(16) % 3
    patterns = torch.stack([torch.linspace(-1, 1, 64).view(1, 8, 8) * sign for sign in (1.0, -1.0, 0.5)])
    images = patterns[labels]  # one image per class: a data set the net can learn in a few dozen steps
    optimizer = torch.optim.Adam(model.net.parameters(), lr=3e-3)

    def loss_now() -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            return float(sum(model.path.loss(model.net, images, labels) for _ in range(8)) / 8)

    before = loss_now()
    for _ in range(60):
        optimizer.zero_grad()
        model.path.loss(model.net, images, labels).backward()
        optimizer.step()
    assert loss_now() < 0.8 * before
    model.ema.module.load_state_dict(model.net.state_dict())
    for name in SAMPLERS:
        settings = model.sampler_settings({"sampler": name, "steps": 4})
        out = model.sample(4, generator=torch.Generator().manual_seed(0), **settings)
        assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all(), name
        assert model.sampler_nfe(**settings) == model.last_sampler_nfe > 0, name


@pytest.mark.parametrize("path", ["vp", "edm"])
def test_each_diffusion_path_learns_and_samples(path):
    torch.manual_seed(0)
    assert_learns_and_samples(_tiny_model([f"model/path={path}"]))


def test_sampler_settings_are_one_checked_read_only_object():
    import json

    from genbench.errors import GenbenchError
    from genbench.sampling import SamplerSettings, sampler_settings

    model = _tiny_model([])
    settings = sampler_settings(model, {"name": "ddim", "steps": 5})  # a config node's names
    assert isinstance(settings, SamplerSettings) and settings["sampler"] == "ddim" and settings["steps"] == 5
    assert settings["guidance_scale"] == 1.0 and "rtol" not in settings  # completed; dopri5's keys only for dopri5
    with pytest.raises(TypeError):
        settings["steps"] = 6
    assert json.loads(json.dumps(settings)) == dict(settings)
    assert sampler_settings(model, {"name": "dopri5", "steps": 1, "rtol": 1e-4, "atol": 1e-4})["rtol"] == 1e-4
    with pytest.raises(GenbenchError):
        sampler_settings(model, {"name": "euler", "steps": 5, "rtol": 1e-4})  # a setting euler does not take
