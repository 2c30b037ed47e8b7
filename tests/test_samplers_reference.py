"""genbench's schedule and samplers against an independent implementation: diffusers' schedulers.

Each test runs genbench's sampler and the diffusers scheduler configured the same way (the schedule's betas as
``trained_betas``, the same timesteps, clipping and prediction type) on the same tiny random-init U-Net and the
same noise, and compares every network input (the state at each step, in variance-preserving scale) and the
result. Tolerance: 1e-6 absolute (1e-4 relative) for alpha_bar and 1e-5 for ``add_noise``; 5e-5 absolute for the
states (times their largest magnitude where that is above 1). The sampler tests hand diffusers genbench's alpha_bar after checking that the two agree: diffusers'
float32 cumprod and genbench's float64 one differ by ~1e-4 relative at the cosine schedule's last step
(alpha_bar 2.4e-9), which an eps-model's x_0 = (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) turns into ~1e-4 in
the state: the ill-conditioning that ``sigma_max`` keeps samplers away from.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from genbench.diffusion import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    EulerSampler,
    HeunSampler,
    NoiseSchedule,
)
from genbench.diffusion.samplers import first_timestep
from genbench.nets.unet import UNet

T = 1000
ATOL = 5e-5  # times the state's largest magnitude when above 1: unclipped, a random net's states reach ~100s
PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction"}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net() -> UNet:
    """A tiny U-Net with random weights; its zero-initialised output conv is re-drawn so the output is not 0."""
    torch.manual_seed(0)
    unet = UNet(1, 8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                dropout=0.0, num_heads=2).eval()  # fmt: skip
    torch.nn.init.normal_(unet.head[-1].weight, std=0.2)
    return unet


class Recorder:
    """``model_fn(x_t, t)`` over the U-Net that keeps every input it is given."""

    def __init__(self, net):
        self.net, self.inputs = net, []

    @torch.no_grad()
    def __call__(self, x, t):
        self.inputs.append((x.clone(), int(t[0])))
        return self.net(x, t.long().expand(x.shape[0]))


def genbench_run(sampler, net, schedule, noise, seed=None):
    recorder = Recorder(net)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    out = sampler(recorder, schedule, noise.clone(), generator)
    return recorder.inputs, out


def assert_same_run(ours, theirs, out, final):
    assert [t for _, t in ours] == [t for _, t in theirs], "the two ran different timesteps"
    for i, ((x, t), (y, _)) in enumerate(zip(ours, theirs)):
        atol = ATOL * max(1.0, y.abs().max().item())
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=lambda m: f"state {i} (t={t}): {m}")
    atol = ATOL * max(1.0, theirs[-1][0].abs().max().item())
    torch.testing.assert_close(out, final.clamp(-1, 1), atol=atol, rtol=0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_add_noise_and_alphas_match_diffusers(kind):
    schedule = NoiseSchedule(T, kind)
    reference = DDPMScheduler(num_train_timesteps=T, trained_betas=schedule.betas.double().numpy())
    torch.testing.assert_close(schedule.alphas_cumprod, reference.alphas_cumprod, atol=1e-6, rtol=1e-4)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(16, 1, 4, 4, generator=generator) * 2 - 1, torch.randn(16, 1, 4, 4, generator=generator)
    t = torch.tensor([0, 1, 10, 100, 250, 400, 500, 600, 700, 800, 900, 950, 990, 997, 998, 999])
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), reference.add_noise(x0, noise, t), atol=1e-5, rtol=0)


def same_alphas(scheduler, schedule: NoiseSchedule, length: int = T):
    """``scheduler`` with genbench's alpha_bar (checked against its own above); call before ``set_timesteps``."""
    scheduler.alphas_cumprod = schedule.alphas_cumprod[:length].clone()
    return scheduler


def diffusers_loop(scheduler, net, start, step_kwargs=None):
    """Run a diffusers scheduler over ``net`` from ``start``; record the variance-preserving model input at every call."""
    inputs, sample = [], start.clone()
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        inputs.append((model_input.clone(), int(t)))
        with torch.no_grad():
            output = net(model_input, torch.full((start.shape[0],), int(t), dtype=torch.long))
        sample = scheduler.step(output, t, sample, **(step_kwargs or {})).prev_sample
    return inputs, sample


@pytest.mark.parametrize("kind,prediction", [("linear", "eps"), ("cosine", "eps"), ("cosine", "v")])
@pytest.mark.parametrize("steps,sigma_max", [(10, None), (7, 80.0), (25, 80.0)])
def test_ddpm_matches_diffusers_step_for_step(net, kind, prediction, steps, sigma_max):
    schedule = NoiseSchedule(T, kind, prediction=prediction)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sampler = DDPMSampler(steps, clip_denoised=True, sigma_max=sigma_max)
    ours, out = genbench_run(sampler, net, schedule, noise, seed=5)
    reference = DDPMScheduler(num_train_timesteps=T, trained_betas=schedule.betas.double().numpy(),
                              prediction_type=PREDICTION_TYPE[prediction], variance_type="fixed_small",
                              clip_sample=True, clip_sample_range=1.0)  # fmt: skip
    same_alphas(reference, schedule).set_timesteps(timesteps=sampler.timesteps(schedule))
    # the same generator state: diffusers draws its fresh noise with torch.randn like genbench does
    theirs, final = diffusers_loop(reference, net, noise, {"generator": torch.Generator().manual_seed(5)})
    assert_same_run(ours, theirs, out, final)


@pytest.mark.parametrize("kind,prediction", [("linear", "eps"), ("cosine", "eps"), ("cosine", "v")])
# eta = 1 only capped: from T-1, 1 - alpha_bar_prev - sigma^2 cancels to ~1e-7, below float32's resolution in diffusers
@pytest.mark.parametrize("steps,eta,capped", [(10, 0.0, False), (10, 0.5, False), (15, 0.0, True), (5, 0.5, True), (10, 1.0, True)])
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_matches_diffusers_step_for_step(net, kind, prediction, steps, eta, capped, clip):
    schedule = NoiseSchedule(T, kind, prediction=prediction)
    # sigma caps whose cut schedule (below) has a length of 930 (linear) or 990 (cosine), multiples of 5 and 15
    sigma_max = {"linear": 80.0, "cosine": 70.0}[kind] if capped else None
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    sampler = DDIMSampler(steps, eta=eta, clip_denoised=clip, sigma_max=sigma_max)
    ours, out = genbench_run(sampler, net, schedule, noise, seed=6)
    # DDIMScheduler takes no custom timesteps: starting at sigma_max is its trailing spacing over the schedule
    # cut after that timestep (the same alpha_bar for every t kept); the step counts here divide its length.
    length = first_timestep(schedule, sigma_max) + 1
    assert length % steps == 0
    reference = DDIMScheduler(num_train_timesteps=length, trained_betas=schedule.betas[:length].double().numpy(),
                              prediction_type=PREDICTION_TYPE[prediction], timestep_spacing="trailing",
                              clip_sample=clip, clip_sample_range=1.0, set_alpha_to_one=True)  # fmt: skip
    same_alphas(reference, schedule, length).set_timesteps(steps)
    step_kwargs = {"eta": eta, "use_clipped_model_output": True, "generator": torch.Generator().manual_seed(6)}
    theirs, final = diffusers_loop(reference, net, noise, step_kwargs)
    assert_same_run(ours, theirs, out, final)


def _solver_reference(name, schedule, prediction, clip):
    common = {"num_train_timesteps": T, "trained_betas": schedule.betas.double().numpy(),
              "prediction_type": PREDICTION_TYPE[prediction]}  # fmt: skip
    if name == "euler":
        assert not clip, "EulerDiscreteScheduler does not clip"
        return EulerDiscreteScheduler(**common, timestep_spacing="trailing", final_sigmas_type="zero")
    if name == "heun":
        return HeunDiscreteScheduler(**common, timestep_spacing="trailing", clip_sample=clip, clip_sample_range=1.0)
    # dynamic thresholding with sample_max_value = 1 is plain clipping to [-1, 1] (Saharia et al. 2022, s >= 1)
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                       lower_order_final=True, final_sigmas_type="zero", timestep_spacing="trailing",
                                       thresholding=clip, sample_max_value=1.0)  # fmt: skip


SOLVERS = {"euler": EulerSampler, "heun": HeunSampler, "dpmpp_2m": DPMSolverPP2MSampler}


@pytest.mark.parametrize("kind,prediction", [("linear", "eps"), ("cosine", "eps"), ("cosine", "v")])
@pytest.mark.parametrize(
    "name,clip", [("euler", False), ("heun", False), ("heun", True), ("dpmpp_2m", False), ("dpmpp_2m", True)]
)
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_ode_solvers_match_diffusers_step_for_step(net, kind, prediction, name, clip, steps):
    schedule = NoiseSchedule(T, kind, prediction=prediction)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    # From the cosine schedule's T-1 (sigma ~ 20,000) diffusers' Euler and Heun cancel numbers of that size in
    # float32 (errors ~1e-3); genbench's are written to avoid that, so they are compared from sigma 80 there
    sampler = SOLVERS[name](steps, clip_denoised=clip, sigma_max=80.0 if kind == "cosine" else None)
    ours, out = genbench_run(sampler, net, schedule, noise)
    reference = same_alphas(_solver_reference(name, schedule, prediction, clip), schedule)
    reference.set_timesteps(timesteps=sampler.timesteps(schedule))
    # Euler and Heun step x / sqrt(alpha_bar) = x * sqrt(sigma^2 + 1) (their init_noise_sigma, sigma_max, is the
    # large-sigma approximation of that scale), DPM-Solver++ steps x itself
    scale = 1.0 if name == "dpmpp_2m" else (reference.sigmas[0].double() ** 2 + 1).sqrt().item()
    theirs, final = diffusers_loop(reference, net, noise * scale)
    assert len(ours) == sampler.nfe
    assert_same_run(ours, theirs, out, final)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_euler_is_ddim_eta_0(net, prediction):
    """Song et al. 2021 sec. 4.3: DDIM (eta = 0) is Euler's method on the ODE in sigma, x / sqrt(alpha_bar)."""
    schedule = NoiseSchedule(T, "cosine", prediction=prediction)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    for clip in (True, False):
        _, euler = genbench_run(EulerSampler(12, clip_denoised=clip), net, schedule, noise)
        _, ddim = genbench_run(DDIMSampler(12, 0.0, clip_denoised=clip), net, schedule, noise)
        torch.testing.assert_close(euler, ddim, atol=ATOL, rtol=0)
