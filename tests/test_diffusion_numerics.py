"""The noise schedule and samplers against independent references (numpy formulas, oracle denoisers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genbench.diffusion import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    EulerSampler,
    HeunSampler,
    NoiseSchedule,
    build_sampler,
    guided,
)
from genbench.diffusion.samplers import first_timestep, spaced_timesteps

T = 1000


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


class CallCounter:
    """Wraps a model_fn and records every (x_t, t) it is called with."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x_t, t):
        self.calls.append((x_t.clone(), t.clone()))
        return self.fn(x_t, t)


def oracle(schedule: NoiseSchedule, x0: torch.Tensor):
    """The ideal network for a data set holding only x0: the exact eps (or v) of any x_t."""
    ab = schedule.alphas_cumprod.double()

    def model_fn(x_t, t):
        a = ab[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
        eps = (x_t.double() - a * x0.double()) / s
        out = eps if schedule.prediction == "eps" else a * eps - s * x0.double()
        return out.float()

    return model_fn


def toy_model(x_t, t):
    return 0.3 * x_t + 0.001 * t.float().view(-1, 1, 1, 1)


def test_linear_alphas_cumprod_matches_numpy():
    schedule = NoiseSchedule(T, "linear", beta_start=1e-4, beta_end=0.02)
    betas = np.linspace(1e-4, 0.02, T)
    np.testing.assert_allclose(schedule.betas.numpy(), betas, rtol=1e-6)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-5)
    sigmas = np.sqrt(1 - np.cumprod(1 - betas))
    np.testing.assert_allclose(schedule.sqrt_one_minus_alphas_cumprod.numpy(), sigmas, rtol=1e-5)


def test_cosine_alphas_cumprod_matches_closed_form():
    schedule = NoiseSchedule(T, "cosine")
    s = 0.008
    f = np.cos((np.arange(1, T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / math.cos(s / (1 + s) * math.pi / 2) ** 2  # alphas_cumprod[i] is alpha_bar((i + 1) / T)
    # the last beta is clipped at 0.999, so only the final entry departs from the closed form
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy()[:-1], alpha_bar[:-1], rtol=1e-4, atol=1e-7)
    assert schedule.betas.max().item() == pytest.approx(0.999)
    assert torch.all(schedule.betas[:-1] < 0.999)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_add_noise_keeps_unit_variance_and_the_signal_scale(kind):
    schedule = NoiseSchedule(T, kind)
    generator = torch.Generator().manual_seed(1)
    for step in (0, 300, 700, 999):
        x0 = torch.randn(200_000, generator=generator)
        noise = torch.randn(200_000, generator=generator)
        x_t = schedule.add_noise(x0, noise, torch.full((200_000,), step))
        assert x_t.var().item() == pytest.approx(1.0, abs=0.015)
        covariance = ((x_t - x_t.mean()) * (x0 - x0.mean())).mean().item()
        assert covariance == pytest.approx(schedule.alphas_cumprod[step].sqrt().item(), abs=0.01)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_predict_x0_eps_inverts_training_target(kind, prediction):
    schedule = NoiseSchedule(T, kind, prediction=prediction)
    t = torch.arange(0, T, 7)
    x0 = torch.rand(len(t), 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    x_t = schedule.add_noise(x0, noise, t)
    x0_hat, eps_hat = schedule.predict_x0_eps(schedule.training_target(x0, noise, t), x_t, t)
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=0)
    torch.testing.assert_close(eps_hat, noise, atol=2e-3, rtol=0)


def test_v_target_matches_salimans_and_ho():
    schedule = NoiseSchedule(T, "cosine", prediction="v")
    t = torch.tensor([0, 499, 998])
    x0, noise = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    ab = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(schedule.training_target(x0, noise, t), ab.sqrt() * noise - (1 - ab).sqrt() * x0)


@pytest.mark.parametrize("kind,expected", [("linear", 929), ("cosine", 990)])
def test_sampling_starts_at_the_last_timestep_within_sigma_max(kind, expected):
    schedule = NoiseSchedule(T, kind)
    alpha_bar = np.cumprod(1 - schedule.betas.double().numpy())
    sigmas = torch.from_numpy(np.sqrt((1 - alpha_bar) / alpha_bar))
    torch.testing.assert_close(schedule.sigmas.double(), sigmas, rtol=1e-5, atol=0)
    assert first_timestep(schedule, 80.0) == expected
    assert sigmas[expected] <= 80 < sigmas[expected + 1]
    assert first_timestep(schedule, None) == T - 1 and first_timestep(schedule, 1e9) == T - 1
    with pytest.raises(ValueError, match="below every sigma"):
        first_timestep(schedule, 1e-6)


def test_sample_timesteps_is_uniform_over_0_to_T_minus_1():
    t = NoiseSchedule(10).sample_timesteps(20_000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() == 0 and t.max() == 9
    assert torch.bincount(t).float().div(20_000).sub(0.1).abs().max() < 0.01


def test_bad_schedule_names_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="linear, cosine"):
        NoiseSchedule(kind="quadratic")
    with pytest.raises(ValueError, match="eps, v"):
        NoiseSchedule(prediction="x0")


def test_spaced_timesteps_are_even_distinct_and_start_from_pure_noise():
    assert spaced_timesteps(T, T) == list(range(T - 1, -1, -1))
    assert spaced_timesteps(T, 1) == [T - 1]
    assert spaced_timesteps(1000, 2) == [999, 499]  # not [999, 0]: that second step would be a near no-op
    assert spaced_timesteps(1000, 4) == [999, 749, 499, 249]
    for steps in range(1, 101):
        ts = spaced_timesteps(100, steps)
        assert len(ts) == steps and ts[0] == 99
        assert ts[-1] == round(100 / steps) - 1 or abs(ts[-1] - (100 / steps - 1)) <= 0.5  # last stride ends at 0
        assert all(a > b for a, b in zip(ts, ts[1:]))
        strides = [a - b for a, b in zip(ts, ts[1:])]
        assert not strides or max(strides) - min(strides) <= 1  # even


@pytest.mark.parametrize(
    "sampler", [DDPMSampler(1), DDPMSampler(7), DDPMSampler(T), DDIMSampler(50), DDIMSampler(3, 1.0)], ids=repr
)
def test_sampler_makes_exactly_steps_model_calls(sampler):
    counter = CallCounter(toy_model)
    out = sampler(counter, NoiseSchedule(T), torch.randn(2, 1, 2, 2), torch.Generator().manual_seed(0))
    schedule = NoiseSchedule(T)
    assert len(counter.calls) == sampler.steps == sampler.nfe
    assert [int(t[0]) for _, t in counter.calls] == spaced_timesteps(T, sampler.steps)
    assert all(t.dtype == torch.long and t.shape == (2,) for _, t in counter.calls)
    assert out.shape == (2, 1, 2, 2) and out.abs().max() <= 1


@pytest.mark.parametrize("steps", [0, T + 1])
def test_steps_outside_1_to_T_are_refused(steps):
    with pytest.raises(ValueError, match=r"\[1, \d+\]|>= 1"):
        DDIMSampler(steps)(toy_model, NoiseSchedule(T), torch.randn(1, 1, 2, 2))


def test_ddim_eta_0_is_deterministic_and_eta_1_is_not():
    schedule, noise = NoiseSchedule(T), torch.randn(2, 1, 4, 4)
    first = DDIMSampler(20, eta=0.0)(toy_model, schedule, noise, torch.Generator().manual_seed(1))
    second = DDIMSampler(20, eta=0.0)(toy_model, schedule, noise, torch.Generator().manual_seed(2))
    assert torch.equal(first, second)
    stochastic = DDIMSampler(20, eta=1.0)
    a = stochastic(toy_model, schedule, noise, torch.Generator().manual_seed(1))
    b = stochastic(toy_model, schedule, noise, torch.Generator().manual_seed(2))
    assert not torch.allclose(a, b)
    assert torch.equal(a, stochastic(toy_model, schedule, noise, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_eta_0_with_an_oracle_follows_the_noising_path_back_to_x0(kind, prediction):
    schedule = NoiseSchedule(T, kind, prediction=prediction)
    x0 = torch.rand(4, 1, 6, 6) * 1.8 - 0.9
    eps = torch.randn_like(x0)
    x_T = schedule.add_noise(x0, eps, torch.full((4,), T - 1))
    counter = CallCounter(oracle(schedule, x0))
    out = DDIMSampler(50, eta=0.0)(counter, schedule, x_T)
    # eta = 0 keeps x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps with the starting eps at every visited t
    for x_t, t in counter.calls:
        torch.testing.assert_close(x_t, schedule.add_noise(x0, eps, t), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_ddpm_with_an_oracle_recovers_x0():
    schedule = NoiseSchedule(T, "linear")
    x0 = torch.rand(4, 1, 6, 6) * 1.8 - 0.9
    out = DDPMSampler(100)(oracle(schedule, x0), schedule, torch.randn_like(x0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("clip_denoised", [True, False])
def test_ddim_eta_1_equals_ddpm_posterior(clip_denoised):
    """Song et al. 2021 sec. 4.1: eta = 1 turns DDIM's update into DDPM's posterior (Ho eq. 7), the same noise draws."""
    schedule, noise = NoiseSchedule(T, "cosine"), torch.randn(2, 1, 4, 4)
    ddpm = DDPMSampler(25, clip_denoised)(toy_model, schedule, noise, torch.Generator().manual_seed(3))
    ddim = DDIMSampler(25, 1.0, clip_denoised)(toy_model, schedule, noise, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ddim, ddpm, atol=1e-5, rtol=1e-5)


def fake_unet(x, t, labels):
    """Output depends on the label (null = 10) so conditional and unconditional branches differ."""
    return x * (labels.float() + 1).view(-1, 1, 1, 1) + 0.01 * t.float().view(-1, 1, 1, 1)


class UNetCounter:
    def __init__(self):
        self.batch_sizes: list[int] = []

    def __call__(self, x, t, labels):
        self.batch_sizes.append(x.shape[0])
        return fake_unet(x, t, labels)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_guided_interpolates_conditional_and_unconditional_in_one_call(scale):
    labels, null = torch.tensor([0, 3, 7]), torch.full((3,), 10)
    x, t = torch.randn(3, 1, 2, 2), torch.full((3,), 500)
    counter = UNetCounter()
    out = guided(counter, labels, null_label=10, guidance_scale=scale)(x, t)
    cond, uncond = fake_unet(x, t, labels), fake_unet(x, t, null)
    torch.testing.assert_close(out, uncond + scale * (cond - uncond))
    if scale == 1.0:
        torch.testing.assert_close(out, cond)
    if scale == 0.0:
        torch.testing.assert_close(out, uncond)
    assert len(counter.batch_sizes) == 1

    counter = UNetCounter()
    DDIMSampler(5)(guided(counter, labels, 10, scale), NoiseSchedule(T), torch.randn(3, 1, 2, 2))
    assert len(counter.batch_sizes) == 5


def test_build_sampler_maps_names_and_refuses_others():
    assert type(build_sampler("ddpm", 10)) is DDPMSampler
    ddim = build_sampler("ddim", 10, eta=0.5)
    assert type(ddim) is DDIMSampler and ddim.steps == 10 and ddim.eta == 0.5
    for name, cls in [("euler", EulerSampler), ("heun", HeunSampler), ("dpmpp_2m", DPMSolverPP2MSampler)]:
        assert type(build_sampler(name, 10)) is cls
    assert build_sampler("heun", 10).nfe == 19 and build_sampler("dpmpp_2m", 10).nfe == 10
    assert build_sampler("ddim", 10, sigma_max=None).timesteps(NoiseSchedule(T))[0] == T - 1
    with pytest.raises(ValueError, match="ddpm, ddim, dpmpp_2m, euler, heun"):
        build_sampler("lms", 10)
    with pytest.raises(ValueError, match="eta"):
        build_sampler("heun", 10, eta=0.5)
    with pytest.raises(ValueError, match="sigma_max"):
        build_sampler("ddim", 10, sigma_max=0)
    with pytest.raises(ValueError, match="eta"):
        build_sampler("ddpm", 10, eta=1.0)
