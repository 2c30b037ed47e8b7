"""Ancestral (DDPM) and implicit (DDIM) samplers, and the loop every sampler shares.

A sampler needs only ``model_fn(x_t, t) -> output`` (t a LongTensor[N]) and the ``NoiseSchedule`` the model
was trained with; the schedule's parameterisation turns the output into a denoised estimate (the EDM
"denoiser" D(x_t, t), Karras et al. 2022 sec. 2), which is all a sampler's update sees. ``guided`` turns a
class-conditional U-Net into such a ``model_fn`` with classifier-free guidance. The ODE solvers (Euler,
Heun, DPM-Solver++) are in :mod:`genbench.diffusion.solvers`, the names the config uses in
:mod:`genbench.diffusion.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from genbench.diffusion.schedule import NoiseSchedule
from genbench.noise import randn_like

ModelFn = Callable[[Tensor, Tensor], Tensor]
Denoiser = Callable[[Tensor, int], tuple[Tensor, Tensor]]

# Where sampling starts: None is T-1. ``sigma_max`` (in sigma = sqrt((1 - alpha_bar) / alpha_bar)) can start it lower,
# as Karras et al. 2022 (EDM, sec. 5) start at sigma = 80. The cosine schedule's T-1 has sigma ~ 20,000 (alpha_bar
# 2.4e-9: its last beta is clipped at 0.999), where an eps-network's x_0 = (x_t - sqrt(1 - alpha_bar) eps) /
# sqrt(alpha_bar) multiplies its error by 20,000. Measured (results/sampler_steps/README.md): starting at sigma 80
# or 700 instead changes DDIM's FID by less than its noise, so the default keeps the whole schedule.
DEFAULT_SIGMA_MAX: float | None = None


def spaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps evenly spaced down from T-1, every step a stride of T/steps ("trailing" spacing).

    The subsequence starts at pure noise (T-1) and its last step denoises from about T/steps - 1; with steps == T
    it is the whole chain, T-1 down to 0. Spacing that also includes t=0 spends one of a few steps where a trained
    network is close to the identity: 2 steps then sample what 1 step does. On the ddim_steps study's checkpoint
    (1,000 samples, fmnist_classifier FID) trailing spacing gave 32.7 / 14.2 / 9.5 / 7.6 / 6.9 at 2 / 5 / 10 / 20 /
    50 steps against 39.7 / 15.8 / 9.2 / 7.2 / 6.8 with t=0 included: a clear gain at few steps for a small cost
    from 10 steps on (see Lin et al., "Common diffusion noise schedules and sample steps are flawed", WACV 2024).
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sampler steps must be in [1, {num_timesteps}] (the schedule's T), got {steps}")
    stride = num_timesteps / steps
    # floor(x + 0.5) rather than round(): banker's rounding could map two points a stride >= 1 apart together
    return [int(num_timesteps - i * stride + 0.5) - 1 for i in range(steps)]


def first_timestep(schedule: NoiseSchedule, sigma_max: float | None) -> int:
    """The noisiest timestep a sampler starts from: T-1, or the last one whose sigma is <= ``sigma_max``."""
    if sigma_max is None:
        return schedule.num_timesteps - 1
    if not sigma_max > 0:
        raise ValueError(f"sigma_max must be > 0 (or null: start at T-1), got {sigma_max}")
    allowed = (schedule.sigmas.double() <= sigma_max).nonzero()
    if len(allowed) == 0:
        raise ValueError(f"sigma_max={sigma_max} is below every sigma of the schedule (smallest {schedule.sigmas[0]:.3g})")
    return int(allowed.max())


class Sampler:
    """The shared loop: denoise at each timestep of the subsequence, then ``step`` to the next one.

    ``sigma_max`` caps where the subsequence starts (None: at T-1), ``clip_denoised`` clamps each x_0 estimate
    to the data range [-1, 1]. ``nfe`` is the number of network evaluations one sample costs.
    """

    def __init__(self, steps: int, clip_denoised: bool = True, sigma_max: float | None = DEFAULT_SIGMA_MAX) -> None:
        if steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")
        self.steps = steps
        self.clip_denoised = clip_denoised
        self.sigma_max = sigma_max

    @property
    def nfe(self) -> int:
        return self.steps

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        """Trailing spacing (``spaced_timesteps``) over 0 .. ``first_timestep``."""
        return spaced_timesteps(first_timestep(schedule, self.sigma_max) + 1, self.steps)

    def denoiser(self, model_fn: ModelFn, schedule: NoiseSchedule) -> Denoiser:
        """D(x_t, t) -> (x_0, eps) estimates: the parameterisation and the clipping live here, not in the updates."""
        alphas_cumprod = schedule.alphas_cumprod.double().cpu()

        def denoise(x: Tensor, t: int) -> tuple[Tensor, Tensor]:
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            x0, eps = schedule.predict_x0_eps(model_fn(x, t_batch).float(), x, t_batch)
            if self.clip_denoised:
                alpha_bar = alphas_cumprod[t].item()
                x0 = x0.clamp(-1, 1)
                eps = (x - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5  # the eps consistent with the clipped x_0
            return x0, eps

        return denoise

    @torch.no_grad()
    def __call__(
        self,
        model_fn: ModelFn,
        schedule: NoiseSchedule,
        noise: Tensor,
        generator=None,
        progress: bool = False,
    ) -> Tensor:
        """Denoise ``noise`` (x_T ~ N(0, I)) into samples in [-1, 1]; ``generator`` drives any fresh noise
        (a ``torch.Generator``, per-image :class:`genbench.noise.IndexedNoise` streams, or None)."""
        timesteps = self.timesteps(schedule)
        alphas_cumprod = [float(a) for a in schedule.alphas_cumprod.double().cpu()[timesteps]] + [1.0]
        with _sampling_bar(progress, len(timesteps), f"{type(self).__name__}, {len(noise)} images") as advance:
            x = self.solve(self.denoiser(model_fn, schedule), noise.float(), timesteps, alphas_cumprod, generator,
                           advance)  # fmt: skip
        return x.clamp(-1, 1)

    def solve(self, denoise: Denoiser, x: Tensor, timesteps: list[int], alphas_cumprod: list[float], generator,
              progress: Callable[[], None] | None) -> Tensor:  # fmt: skip
        """One ``step`` per timestep; ``alphas_cumprod[i]`` belongs to ``timesteps[i]``, and ends with 1.0 (x_0).
        ``progress``: called after each step (see :func:`_maybe_progress`), or None."""
        for i, t in enumerate(_maybe_progress(timesteps, progress)):
            x0, eps = denoise(x, t)
            x = self.step(x, x0, eps, alphas_cumprod[i], alphas_cumprod[i + 1], generator)
        return x

    def step(
        self, x_t: Tensor, x0: Tensor, eps: Tensor, alpha_bar: float, alpha_bar_prev: float, generator
    ) -> Tensor:
        """x at the next (less noisy) timestep of the subsequence, whose alpha_bar is ``alpha_bar_prev``."""
        raise NotImplementedError

    def settings(self) -> str:
        return f"steps={self.steps}, sigma_max={self.sigma_max}, clip_denoised={self.clip_denoised}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()})"


class DDPMSampler(Sampler):
    """Ancestral sampling from the posterior q(x_prev | x_t, x_0) (Ho et al. 2020 eqs. 6-7) with sigma^2 = beta-tilde.

    On a subsequence the betas are respaced from its alpha_bars, beta = 1 - alpha_bar / alpha_bar_prev
    (Nichol & Dhariwal 2021 sec. 4), so 1000 steps is the original chain and fewer steps a coarser one.
    """

    def __init__(self, steps: int = 1000, clip_denoised: bool = True, sigma_max: float | None = DEFAULT_SIGMA_MAX) -> None:
        super().__init__(steps, clip_denoised, sigma_max)

    def step(self, x_t, x0, eps, alpha_bar, alpha_bar_prev, generator):
        beta = 1 - alpha_bar / alpha_bar_prev
        # posterior mean, Ho eq. 7
        mean = (alpha_bar_prev**0.5 * beta / (1 - alpha_bar)) * x0 + (
            (1 - beta) ** 0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar)
        ) * x_t
        variance = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)  # beta-tilde, Ho eq. 7; zero on the last step
        if variance == 0:
            return mean
        return mean + variance**0.5 * randn_like(x_t, generator)


class DDIMSampler(DDPMSampler):
    """DDIM (Song et al. 2021 eq. 12): eta = 0 is deterministic, eta = 1 has DDPM's posterior variance."""

    def __init__(
        self, steps: int = 50, eta: float = 0.0, clip_denoised: bool = True, sigma_max: float | None = DEFAULT_SIGMA_MAX
    ) -> None:
        super().__init__(steps, clip_denoised, sigma_max)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta

    def step(self, x_t, x0, eps, alpha_bar, alpha_bar_prev, generator):
        # Song et al. 2021 eq. 12, with sigma from eq. 16
        sigma = self.eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)) ** 0.5
        x = alpha_bar_prev**0.5 * x0 + max(1 - alpha_bar_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma == 0:
            return x
        return x + sigma * randn_like(x_t, generator)

    def settings(self) -> str:
        return f"steps={self.steps}, eta={self.eta}, sigma_max={self.sigma_max}, clip_denoised={self.clip_denoised}"


@contextmanager
def _sampling_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[[], None] | None]:
    """A rich bar of ``total`` steps on stderr (stdout may carry a command's result), or None when not ``enabled``;
    yields the function that advances it by one step.

    The bar is set to its total when the solver returns: a solver may return from inside its loop (DPM-Solver++
    returns its x_0 estimate on the last step), so a bar advanced after each step alone stopped one short (19/20).
    A solver that raises leaves the bar where it stopped.
    """
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)  # fmt: skip

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
        bar.update(task, completed=total)


def _maybe_progress(timesteps: list[int], advance: Callable[[], None] | None) -> Iterable[int]:
    """``timesteps``, calling ``advance`` (from :func:`_sampling_bar`) after each step is done."""
    if advance is None:
        yield from timesteps
        return
    for t in timesteps:
        yield t
        advance()


def guided(model: Callable[..., Tensor], labels: Tensor, null_label: int, guidance_scale: float) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022) as ``model_fn(x_t, t)`` for a ``model(x, t, labels)`` U-Net.

    Convention: out = out_uncond + w * (out_cond - out_uncond) with w = ``guidance_scale``, so w = 1 is the
    purely conditional model, w = 0 the purely unconditional one (labels all ``null_label``), and w > 1
    strengthens the condition. (Ho & Salimans write the same rule as (1 + w') cond - w' uncond, so their w' is
    w - 1 here.) The rule is applied to the raw output, which is equivalent for eps and v prediction since
    both are affine in it with the same x_t term.

    Each call makes ONE forward pass: w = 1 and w = 0 run only the branch they need; any other w batches the
    conditional and unconditional halves together, so a sampler still makes exactly ``steps`` network calls.
    """

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        null = torch.full_like(labels, null_label)
        if guidance_scale == 1:
            return model(x_t, t, labels)
        if guidance_scale == 0:
            return model(x_t, t, null)
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = out.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    return model_fn
