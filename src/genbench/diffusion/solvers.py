"""Deterministic ODE solvers of the probability-flow ODE: Euler and Heun (Karras et al. 2022), DPM-Solver++(2M)
(Lu et al. 2022, "DPM-Solver++: fast solver for guided sampling of diffusion probabilistic models").

They step between the same trailing timesteps as DDPM/DDIM, so a step count means the same noise levels for
every sampler, and see only the denoiser D(x_t, t) -> (x_0, eps) of :meth:`Sampler.denoiser`. Euler and Heun
work in the variance-exploding view x~ = x_t / sqrt(alpha_bar), sigma = sqrt((1 - alpha_bar) / alpha_bar)
(Karras Table 1), where the ODE is dx~/dsigma = (x~ - D) / sigma (Karras eq. 3). With clipping on, Euler is
DDIM with eta = 0 written in that view (Song et al. 2021 sec. 4.3); it is here as the baseline Heun corrects.

Written here rather than wrapped from diffusers so that they take per-image noise streams and genbench's
denoiser like the other samplers, and so diffusers stays a test-only dependency; tests/test_samplers_reference.py
checks each against diffusers' EulerDiscreteScheduler, HeunDiscreteScheduler and DPMSolverMultistepScheduler.
"""

from __future__ import annotations

import math

from torch import Tensor

from genbench.diffusion.samplers import Denoiser, Sampler, _maybe_progress


def _sigma(alpha_bar: float) -> float:
    """sqrt((1 - alpha_bar) / alpha_bar); 0 at alpha_bar = 1, the end of sampling."""
    return math.sqrt((1 - alpha_bar) / alpha_bar)


class EulerSampler(Sampler):
    """Karras et al. 2022 Algorithm 1 without its second-order correction: one network evaluation per step."""

    def solve(self, denoise: Denoiser, x: Tensor, timesteps, alphas_cumprod, generator, progress) -> Tensor:
        for i, t in enumerate(_maybe_progress(timesteps, progress)):
            ab, ab_next = alphas_cumprod[i], alphas_cumprod[i + 1]
            sigma, sigma_next = _sigma(ab), _sigma(ab_next)
            x0, _ = denoise(x, t)
            slope = (x / math.sqrt(ab) - x0) / sigma  # Karras eq. 3 with D = x0
            # x~ + (sigma_next - sigma) slope, written as x0 + sigma_next slope (x~ = x0 + sigma slope) so that it
            # does not cancel two numbers of size sigma (~20,000 at the cosine schedule's T-1) in float32
            x = (x0 + sigma_next * slope) * math.sqrt(ab_next)
        return x


class HeunSampler(Sampler):
    """Karras et al. 2022 Algorithm 1 (deterministic, S_churn = 0): Euler, then the trapezoidal correction
    from a second evaluation at the step's end, except on the last step, which ends at sigma = 0."""

    @property
    def nfe(self) -> int:
        return 2 * self.steps - 1

    def solve(self, denoise: Denoiser, x: Tensor, timesteps, alphas_cumprod, generator, progress) -> Tensor:
        for i, t in enumerate(_maybe_progress(timesteps, progress)):
            ab, ab_next = alphas_cumprod[i], alphas_cumprod[i + 1]
            sigma, sigma_next = _sigma(ab), _sigma(ab_next)
            x0, _ = denoise(x, t)
            slope = (x / math.sqrt(ab) - x0) / sigma
            x_next = x0 + sigma_next * slope  # Algorithm 1 line 5, in EulerSampler's cancellation-free form
            if sigma_next > 0:  # lines 6-8: the slope at the Euler point, then their mean
                x0_next, _ = denoise(x_next * math.sqrt(ab_next), timesteps[i + 1])
                slope_next = (x_next - x0_next) / sigma_next
                x_next = x_next + (sigma_next - sigma) * (slope_next - slope) / 2
            x = x_next * math.sqrt(ab_next)
        return x


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2: a second-order multistep solver in the data (x_0)
    prediction and log-SNR time lambda = log(alpha / sigma) (alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)).

    The first step has no history and is first order (it is DDIM's); the last, to alpha_bar = 1 where lambda is
    infinite, is first order too and returns the x_0 estimate (as diffusers' ``final_sigmas_type="zero"``).
    """

    def solve(self, denoise: Denoiser, x: Tensor, timesteps, alphas_cumprod, generator, progress) -> Tensor:
        x0_prev, h_prev = None, None
        for i, t in enumerate(_maybe_progress(timesteps, progress)):
            ab, ab_next = alphas_cumprod[i], alphas_cumprod[i + 1]
            x0, _ = denoise(x, t)
            if ab_next >= 1:
                return x0
            lam, lam_next = 0.5 * math.log(ab / (1 - ab)), 0.5 * math.log(ab_next / (1 - ab_next))
            h = lam_next - lam
            if x0_prev is None:
                d = x0
            else:  # Algorithm 2: D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1} / h_i
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            # x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) D   (Lu et al. 2022 eq. 10)
            x = math.sqrt((1 - ab_next) / (1 - ab)) * x - math.sqrt(ab_next) * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        return x
