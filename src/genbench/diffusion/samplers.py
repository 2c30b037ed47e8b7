"""Ancestral (DDPM) and implicit (DDIM) samplers, and the loop every solver shares.

A solver sees only a denoiser D(x, point) -> (x_0, eps) and a time grid (:class:`~genbench.diffusion.paths.Grid`):
the path (:mod:`genbench.diffusion.paths`) turns the network's output into that estimate on its own time or sigma,
and the space (:mod:`genbench.diffusion.spaces`) owns clipping and decoding. So one solver serves DDPM's discrete
VP path, EDM's sigmas and a rectified flow's continuous time, in pixels or in a latent. ``guided`` turns a
class-conditional U-Net into the ``model_fn(x, time)`` the denoiser calls, with classifier-free guidance. The ODE
solvers (Euler, Heun, midpoint, DPM-Solver++, dopri5) are in :mod:`genbench.diffusion.solvers`, the names the
config uses in :mod:`genbench.diffusion.registry`.

Every update is written for a Gaussian path x = alpha x_0 + sigma eps in general (Kingma et al. 2021 sec. 3.2's
q(x_s | x_t, x_0)), which for DDPM's alpha = sqrt(alpha_bar) is Ho et al.'s and Song et al.'s formulas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from genbench.diffusion.paths import Grid, Path, Point
from genbench.diffusion.schedule import NoiseSchedule, first_timestep, spaced_timesteps
from genbench.diffusion.spaces import PIXELS, Space
from genbench.noise import randn_like

ModelFn = Callable[[Tensor, Tensor], Tensor]
Denoiser = Callable[[Tensor, Point], tuple[Tensor, Tensor]]

__all__ = ["DEFAULT_SIGMA_MAX", "DDIMSampler", "DDPMSampler", "Denoiser", "ModelFn", "Sampler", "first_timestep",
           "guided", "spaced_timesteps", "NoiseSchedule"]  # fmt: skip

# Where sampling starts: None is the path's noisiest point (DDPM: T-1). ``sigma_max`` (in Karras's sigma = sigma /
# alpha, for DDPM sqrt((1 - alpha_bar) / alpha_bar)) can start it lower, as Karras et al. 2022 (EDM, sec. 5) start at
# sigma = 80. The cosine schedule's T-1 has sigma ~ 20,000 (alpha_bar 2.4e-9: its last beta is clipped at 0.999),
# where an eps-network's x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) multiplies its error by 20,000.
# Measured (results/sampler_steps/README.md): starting at sigma 80 or 700 instead changes DDIM's FID by less than its
# noise, so the default keeps the whole schedule.
DEFAULT_SIGMA_MAX: float | None = None


class Sampler:
    """The shared loop: denoise at each point of the grid, then ``step`` to the next one.

    ``sigma_max`` caps where the grid starts (None: at the path's noisiest point), ``clip_denoised`` lets the space
    clip each x_0 estimate (pixels: to [-1, 1]; a latent space clips nothing). ``nfe`` is the number of network
    evaluations one sample costs (None for an adaptive solver until it has run: ``last_nfe``).
    """

    adaptive = False

    def __init__(self, steps: int, clip_denoised: bool = True, sigma_max: float | None = DEFAULT_SIGMA_MAX) -> None:
        if steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")
        self.steps = steps
        self.clip_denoised = clip_denoised
        self.sigma_max = sigma_max
        self.last_nfe: int | None = None

    @property
    def nfe(self) -> int | None:
        return self.steps

    def grid(self, path: Path) -> Grid:
        return path.grid(self.steps, self.sigma_max)

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        """The DDPM timesteps the network sees (trailing spacing), for a discrete VP path."""
        return [p.time for p in self.grid(schedule).points[:-1]]

    def denoiser(self, model_fn: ModelFn, path: Path, space: Space = PIXELS) -> Denoiser:
        """D(x, point) -> (x_0, eps) estimates: the path's parameterisation, then the space's clipping (with the
        eps made consistent with the clipped x_0), never the updates'."""
        clip = self.clip_denoised and space.clips

        def denoise(x: Tensor, point: Point) -> tuple[Tensor, Tensor]:
            dtype = torch.long if isinstance(point.time, int) else torch.float32
            time = torch.full((x.shape[0],), point.time, dtype=dtype, device=x.device)
            x0, eps = path.to_x0_eps(model_fn(path.net_input(x, point), time).float(), x, point)
            if clip:
                x0 = space.clip(x0)
                if point.sigma > 0:  # at sigma 0 no eps is consistent with a moved x_0: the path's own stays
                    eps = (x - point.alpha * x0) / point.sigma
            return x0, eps

        return denoise

    @torch.no_grad()
    def __call__(
        self,
        model_fn: ModelFn,
        path: Path,
        noise: Tensor,
        generator=None,
        progress: bool = False,
        space: Space = PIXELS,
        image: Tensor | None = None,
        strength: float = 1.0,
    ) -> Tensor:
        """Solve from ``noise`` (standard normal, the space's state shape) to the data and decode it: images in
        [-1, 1]. ``generator`` drives any fresh noise (a ``torch.Generator``, per-image
        :class:`genbench.noise.IndexedNoise` streams, or None).

        ``image``, ``strength``: an image prompt (SDEdit, Meng et al. 2022). ``image`` is the prompt's state (the
        space's encoding of it); only the grid's last ``round(strength * steps)`` steps are solved, from the point
        where the image is noised, x = alpha x_0 + sigma ``noise`` (eq. 2 of SDEdit for the VP path). Strength 1
        starts where sampling does (the path's own start: the image plays no part), strength 0 returns the image's
        state decoded."""
        grid = self.grid(path)
        start = path.start(noise.float(), grid)
        if image is not None and strength < 1:
            grid = grid.last(round(strength * grid.steps))
            first = grid.points[0]
            start = first.alpha * image.float() + first.sigma * noise.float()
            if grid.steps == 0:  # nothing to solve (an adaptive solver could not even start at sigma 0)
                self.last_nfe = 0
                return space.decode(start)
        calls = [0]

        def counted(x: Tensor, time: Tensor) -> Tensor:
            calls[0] += 1
            return model_fn(x, time)

        total = grid.steps if not self.adaptive else None
        with step_bar(progress, total, f"{type(self).__name__}, {len(noise)} images") as advance:
            x = self.solve(self.denoiser(counted, path, space), start, grid, generator, advance, path)
        self.last_nfe = calls[0]
        return space.decode(x)

    def solve(self, denoise: Denoiser, x: Tensor, grid: Grid, generator, progress: Callable[[], None] | None,
              path: Path) -> Tensor:  # fmt: skip
        """One ``step`` per grid point but the last. ``progress``: called after each step, or None."""
        for i in maybe_progress(range(grid.steps), progress):
            x0, eps = denoise(x, grid.points[i])
            x = self.step(x, x0, eps, grid.points[i], grid.points[i + 1], generator)
        return x

    def step(self, x: Tensor, x0: Tensor, eps: Tensor, here: Point, there: Point, generator) -> Tensor:
        """x at the next (less noisy) grid point ``there``."""
        raise NotImplementedError

    def settings(self) -> str:
        return f"steps={self.steps}, sigma_max={self.sigma_max}, clip_denoised={self.clip_denoised}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()})"


def posterior(here: Point, there: Point) -> tuple[float, float, float]:
    """q(x_s | x_t, x_0) from point t (``here``) to the less noisy s (``there``): the weights of x_t and x_0 in its
    mean and its variance (Kingma et al. 2021 eqs. 24-25; for DDPM, Ho et al. eq. 7 with beta respaced)."""
    alpha_ts = here.alpha / there.alpha
    var_ts = here.sigma**2 - alpha_ts**2 * there.sigma**2  # sigma^2_{t|s}; DDPM: beta = 1 - alpha_bar / alpha_bar_prev
    ratio = there.sigma**2 / here.sigma**2
    return alpha_ts * ratio, there.alpha * var_ts / here.sigma**2, var_ts * ratio


class DDPMSampler(Sampler):
    """Ancestral sampling from the posterior q(x_prev | x_t, x_0) (Ho et al. 2020 eqs. 6-7) with sigma^2 = beta-tilde.

    On a subsequence the betas are respaced from its alpha_bars, beta = 1 - alpha_bar / alpha_bar_prev
    (Nichol & Dhariwal 2021 sec. 4), so 1000 steps is the original chain and fewer steps a coarser one.
    """

    def __init__(self, steps: int = 1000, clip_denoised: bool = True, sigma_max: float | None = DEFAULT_SIGMA_MAX) -> None:
        super().__init__(steps, clip_denoised, sigma_max)

    def step(self, x, x0, eps, here, there, generator):
        w_x, w_x0, variance = posterior(here, there)
        mean = w_x0 * x0 + w_x * x
        if variance <= 0:  # zero on the last step
            return mean
        return mean + variance**0.5 * randn_like(x, generator)


class DDIMSampler(DDPMSampler):
    """DDIM (Song et al. 2021 eq. 12): eta = 0 is deterministic, eta = 1 has DDPM's posterior variance."""

    def __init__(
        self, steps: int = 50, eta: float = 0.0, clip_denoised: bool = True, sigma_max: float | None = DEFAULT_SIGMA_MAX
    ) -> None:
        super().__init__(steps, clip_denoised, sigma_max)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta

    def step(self, x, x0, eps, here, there, generator):
        # Song et al. 2021 eq. 12, with sigma from eq. 16 (eta times the posterior's standard deviation)
        _, _, variance = posterior(here, there)
        sigma = self.eta * max(variance, 0.0) ** 0.5
        x = there.alpha * x0 + max(there.sigma**2 - sigma**2, 0.0) ** 0.5 * eps
        if sigma == 0:
            return x
        return x + sigma * randn_like(x, generator)

    def settings(self) -> str:
        return f"steps={self.steps}, eta={self.eta}, sigma_max={self.sigma_max}, clip_denoised={self.clip_denoised}"


@contextmanager
def step_bar(enabled: bool, total: int | None, description: str) -> Iterator[Callable[[], None] | None]:
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
        if total is None:  # an adaptive solver: its steps are known once it is done
            total = int(bar.tasks[0].completed)
            bar.update(task, total=total)
        bar.update(task, completed=total)


def maybe_progress(timesteps: Iterable[int], advance: Callable[[], None] | None) -> Iterable[int]:
    """``timesteps``, calling ``advance`` (from :func:`step_bar`) after each step is done."""
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
