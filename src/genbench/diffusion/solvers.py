"""ODE solvers of the probability-flow ODE: Euler, Heun (Karras et al. 2022), the explicit midpoint method,
DPM-Solver++(2M) (Lu et al. 2022) and an adaptive reference, dopri5 (through ``torchdiffeq``).

They see only the denoiser D(x, point) -> (x_0, eps) and the path's grid. Euler, Heun, midpoint and dopri5 step in
the frame the path names (:data:`genbench.diffusion.paths.FRAMES`): y = x / s = a(tau) x_0 + b(tau) eps with a and b
affine in tau, so the velocity is dy/dtau = da x_0 + db eps (``Grid.slopes``). For the diffusion paths that is Karras's view
(y = x / alpha, tau = sigma / alpha; his eq. 3 dy/dsigma = (y - D) / sigma); for a rectified flow it is x itself
against t, velocity eps - x_0. In either frame an Euler step is exactly DDIM's eta = 0 step (Song et al. 2021 sec. 4.3).

Written here rather than wrapped from diffusers so that they take per-image noise streams and genbench's
denoiser like the other samplers, and so diffusers stays a test-only dependency; tests/test_samplers_reference.py
checks them against diffusers' EulerDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler and
FlowMatchEulerDiscreteScheduler.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genbench.diffusion.paths import Grid, Point
from genbench.diffusion.samplers import Denoiser, Sampler, maybe_progress


def _frame(grid: Grid, point: Point, tau: float) -> tuple[float, float, float]:
    """(s, a, b) of ``point`` (at frame time ``tau``) in the grid's frame: y = x / s = a x_0 + b eps."""
    if grid.frame == "ve":
        return point.alpha, 1.0, tau
    return 1.0, point.alpha, point.sigma


def _slope_eps(grid: Grid, y: Tensor, x0: Tensor, point: Point, tau: float) -> Tensor:
    """eps = (y - a x_0) / b from the frame's state y itself (b > 0): Karras's slope (y - D) / sigma in "ve"."""
    _, a, b = _frame(grid, point, tau)
    return (y - x0) / b if a == 1.0 else (y - a * x0) / b


def _here(grid: Grid, denoise: Denoiser, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
    """The x_0 estimate at grid point ``i`` and the eps of the state ``x`` there."""
    point, tau = grid.points[i], grid.taus[i]
    x0, _ = denoise(x, point)
    return x0, _slope_eps(grid, x / _frame(grid, point, tau)[0], x0, point, tau)


def _velocity(grid: Grid, x0: Tensor, eps: Tensor) -> Tensor:
    da, db = grid.slopes
    return db * eps if da == 0 else da * x0 + db * eps


class EulerSampler(Sampler):
    """Karras et al. 2022 Algorithm 1 without its second-order correction: one network evaluation per step."""

    def solve(self, denoise, x, grid, generator, progress, path):
        for i in maybe_progress(range(grid.steps), progress):
            x0, eps = _here(grid, denoise, x, i)
            scale, a, b = _frame(grid, grid.points[i + 1], grid.taus[i + 1])
            # y + (tau_next - tau) v, written as a_next x0 + b_next eps so that it does not cancel two numbers of
            # size sigma (~20,000 at the cosine schedule's T-1) in float32
            x = (a * x0 + b * eps) * scale
        return x


class HeunSampler(Sampler):
    """Karras et al. 2022 Algorithm 1 (deterministic, S_churn = 0): Euler, then the trapezoidal correction
    from a second evaluation at the step's end, except on the last step (to sigma = 0, or a flow's t = 0)."""

    @property
    def nfe(self) -> int:
        return 2 * self.steps - 1

    def solve(self, denoise, x, grid, generator, progress, path):
        for i in maybe_progress(range(grid.steps), progress):
            x0, eps = _here(grid, denoise, x, i)
            there = grid.points[i + 1]
            scale, a, b = _frame(grid, there, grid.taus[i + 1])
            y_next = a * x0 + b * eps  # Algorithm 1 line 5, in EulerSampler's cancellation-free form
            if i + 1 < grid.steps:  # lines 6-8: the velocity at the Euler point, then their mean
                x_next = y_next * scale
                x0_next, _ = denoise(x_next, there)
                eps_next = _slope_eps(grid, y_next, x0_next, there, grid.taus[i + 1])
                change = _velocity(grid, x0_next, eps_next) - _velocity(grid, x0, eps)
                y_next = y_next + (grid.taus[i + 1] - grid.taus[i]) * change / 2
            x = y_next * scale
        return x


class MidpointSampler(Sampler):
    """The explicit midpoint method (second-order Runge-Kutta): a half Euler step, the velocity there, and the
    whole step with it; two network evaluations per step."""

    @property
    def nfe(self) -> int:
        return 2 * self.steps

    def solve(self, denoise, x, grid, generator, progress, path):
        for i in maybe_progress(range(grid.steps), progress):
            x0, eps = _here(grid, denoise, x, i)
            tau, tau_next = grid.taus[i], grid.taus[i + 1]
            tau_m = (tau + tau_next) / 2
            middle = path.at(tau_m)
            scale_m, a_m, b_m = _frame(grid, middle, tau_m)
            y_m = a_m * x0 + b_m * eps
            x0_m, _ = denoise(y_m * scale_m, middle)
            eps_m = _slope_eps(grid, y_m, x0_m, middle, tau_m)
            scale, a, b = _frame(grid, grid.points[i + 1], grid.taus[i + 1])
            # y + dtau v_m = (y + dtau v) + dtau (v_m - v), the first term cancellation-free as in Euler
            change = _velocity(grid, x0_m, eps_m) - _velocity(grid, x0, eps)
            x = (a * x0 + b * eps + (tau_next - tau) * change) * scale
        return x


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2: a second-order multistep solver in the data (x_0)
    prediction and log-SNR time lambda = log(alpha / sigma).

    The first step has no history and is first order (it is DDIM's); the last, to sigma = 0 where lambda is
    infinite, is first order too and returns the x_0 estimate (as diffusers' ``final_sigmas_type="zero"``). A path
    that starts at alpha = 0 (a rectified flow's t = 1) has lambda = -inf there: its first step is DDIM's, and the
    second, whose ratio of steps is infinite, first order as well.
    """

    def solve(self, denoise, x, grid, generator, progress, path):
        x0_prev, h_prev = None, None
        for i in maybe_progress(range(grid.steps), progress):
            here, there = grid.points[i], grid.points[i + 1]
            x0, _ = denoise(x, here)
            if there.sigma <= 0:
                return x0
            lam = math.log(here.alpha / here.sigma) if here.alpha > 0 else -math.inf
            h = math.log(there.alpha / there.sigma) - lam
            if x0_prev is None or math.isinf(h_prev):
                d = x0
            else:  # Algorithm 2: D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1} / h_i
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            # x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) D   (Lu et al. 2022 eq. 10)
            x = (there.sigma / here.sigma) * x - there.alpha * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        return x


class Dopri5Sampler(Sampler):
    """The adaptive Dormand-Prince 5(4) method of ``torchdiffeq`` (Chen et al. 2018), as a reference solution: it
    integrates the frame's ODE from the grid's first point down to the least time the path may be evaluated at,
    with relative and absolute tolerances ``rtol`` and ``atol``, then takes the x_0 estimate there (one more
    evaluation) where that time is above 0. The step size is the batch's, not each image's: an image's result
    depends, within the tolerance, on the batch it was solved in. Its NFE is counted (``last_nfe``), not known
    ahead; ``steps`` only sets where a capped ``sigma_max`` grid starts.
    """

    adaptive = True

    def __init__(self, steps: int = 1, rtol: float = 1e-5, atol: float = 1e-5, clip_denoised: bool = True,
                 sigma_max: float | None = None) -> None:  # fmt: skip
        super().__init__(steps, clip_denoised, sigma_max)
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"dopri5's rtol and atol must be > 0, got {rtol} and {atol}")
        self.rtol, self.atol = float(rtol), float(atol)

    @property
    def nfe(self) -> int | None:
        return self.last_nfe

    def solve(self, denoise, x, grid, generator, progress, path):
        from torchdiffeq import odeint

        start, end = grid.taus[0], path.smallest_tau()
        scale0, _, _ = _frame(grid, grid.points[0], start)

        # The "ve" frame's tau spans decades (the VP path's sigma from ~20,000 down to ~0.006): it is integrated in
        # u = ln(tau), dy/du = tau dy/dtau, where a step size means the same at every noise level.
        logarithmic = grid.frame == "ve"
        to_tau = math.exp if logarithmic else (lambda u: u)

        def velocity(u: Tensor, y: Tensor) -> Tensor:
            # torchdiffeq's initial step size probe may look past the interval's end: keep it inside
            tau = min(max(to_tau(float(u)), end), start)
            point = path.at(tau)
            scale, _, _ = _frame(grid, point, tau)
            x0, eps = denoise((y * scale).float(), point)
            if progress is not None:
                progress()
            v = _velocity(grid, x0, eps).double()
            return v * tau if logarithmic else v

        bounds = [math.log(start), math.log(end)] if logarithmic else [start, end]
        times = torch.tensor(bounds, dtype=torch.float64, device=x.device)  # float64: state and time
        y = odeint(velocity, x.double() / scale0, times, rtol=self.rtol, atol=self.atol, method="dopri5")[-1]
        last = path.at(end)
        scale, _, _ = _frame(grid, last, end)
        if last.sigma > 0:
            x0, _ = denoise((y * scale).float(), last)
            if progress is not None:
                progress()
            return x0
        return (y * scale).float()

    def settings(self) -> str:
        return f"rtol={self.rtol}, atol={self.atol}, sigma_max={self.sigma_max}, clip_denoised={self.clip_denoised}"
