"""Flow matching (Lipman et al. 2023) and rectified flow (Liu et al. 2023) as a path of the iterative core.

Time runs as in diffusion and in SD3/diffusers' flow schedulers: t = 1 is noise, t = 0 the data, and the straight
path between them is x_t = (1 - t) x_0 + (sigma_min + (1 - sigma_min) t) eps (Lipman et al. eq. 20, read backwards;
sigma_min = 0 is rectified flow). The network predicts the velocity dx/dt = (1 - sigma_min) eps - x_0 of that
conditional path, and the ODE is solved in the ``"linear"`` frame (x against t).

Options of the recipe:

* ``time_sampling``: ``uniform`` t, or ``logit_normal`` (Esser et al. 2024, SD3: t = sigmoid(n), n ~ N(m, s^2)),
  which spends training on the middle of the path, where the velocity is hardest to predict.
* ``coupling``: ``independent`` noise and data, or ``ot``: minibatch optimal transport (Tong et al. 2024, OT-CFM;
  Pooladian et al. 2023): each batch's noise is matched to its images by the exact assignment that minimises the
  summed squared distance (``pot``'s network simplex), which straightens the paths the ODE must follow.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genbench.diffusion.paths import Grid, Path, Point
from genbench.schema.types import Float, NonNegativeFloat, PositiveFloat

TIME_SCALE = 1000.0  # the network's time input is 1000 t: genbench's U-Net embeds DDPM-like timesteps 0..999


def ot_pairing(x0: Tensor, noise: Tensor) -> Tensor:
    """The permutation of ``noise`` that pairs row i of ``x0`` with noise row perm[i] at the least summed squared
    distance: the exact minibatch OT plan between two uniform empirical measures of equal size is a permutation
    (Birkhoff), which ``ot.emd`` finds."""
    import ot

    cost = torch.cdist(x0.flatten(1).double(), noise.flatten(1).double()).pow(2).cpu().numpy()
    uniform = np.full(len(x0), 1.0 / len(x0))
    plan = ot.emd(uniform, uniform, cost)
    return torch.as_tensor(plan.argmax(axis=1), device=noise.device)


class FlowPath(Path):
    """Conditional flow matching on the straight path; see the module's docstring."""

    frame = "linear"

    def __init__(
        self,
        sigma_min: NonNegativeFloat = 0.0,
        time_sampling: Literal["uniform", "logit_normal"] = "uniform",
        logit_mean: Float = 0.0,
        logit_std: PositiveFloat = 1.0,
        coupling: Literal["independent", "ot"] = "independent",
    ) -> None:
        super().__init__()
        if not 0 <= sigma_min < 1:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min, self.time_sampling, self.coupling = sigma_min, time_sampling, coupling
        self.logit_mean, self.logit_std = logit_mean, logit_std

    @property
    def slopes(self) -> tuple[float, float]:
        return -1.0, 1.0 - self.sigma_min

    def sample_times(self, n: int, device) -> Tensor:
        if self.time_sampling == "uniform":
            return torch.rand(n, device=device)
        return torch.sigmoid(torch.randn(n, device=device) * self.logit_std + self.logit_mean)

    def interpolate(self, x0: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t, the velocity target) for data ``x0``, ``noise`` and times ``t`` [N]."""
        t = t.view(-1, *([1] * (x0.ndim - 1)))
        x_t = (1 - t) * x0 + (self.sigma_min + (1 - self.sigma_min) * t) * noise
        return x_t, (1 - self.sigma_min) * noise - x0

    def loss(self, net, x0, labels):
        t = self.sample_times(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        if self.coupling == "ot":
            noise = noise[ot_pairing(x0, noise)]
        x_t, target = self.interpolate(x0, noise, t)
        return F.mse_loss(net(x_t, t * TIME_SCALE, labels).float(), target)

    def at(self, tau: float) -> Point:
        return Point(1.0 - tau, self.sigma_min + (1 - self.sigma_min) * tau, TIME_SCALE * tau)

    def grid(self, steps: int, sigma_max: float | None = None) -> Grid:
        """``steps`` equal steps in t from 1 (or, with ``sigma_max``, the t whose sigma / alpha is that) to 0."""
        if steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")
        top = 1.0 if sigma_max is None else min(1.0, self._time_of(float(sigma_max)))
        taus = [top * (1 - i / steps) for i in range(steps + 1)]
        taus[-1] = 0.0
        points = tuple(self.at(tau) for tau in taus)
        if self.sigma_min == 0:
            points = points[:-1] + (Point(1.0, 0.0, 0.0),)
        return Grid(points, tuple(taus), self.frame, self.slopes)

    def _time_of(self, ratio: float) -> float:
        """The t whose sigma / alpha is ``ratio`` (Karras's sigma, which ``sampler.sigma_max`` caps)."""
        # sigma_min + (1 - sigma_min) t = ratio (1 - t)
        return (ratio - self.sigma_min) / (ratio + 1 - self.sigma_min)

    def smallest_tau(self) -> float:
        return 0.0

    def to_x0_eps(self, output: Tensor, x: Tensor, point: Point) -> tuple[Tensor, Tensor]:
        """From the velocity v = c eps - x_0 (c = 1 - sigma_min) at x = (1 - t) x_0 + (sigma_min + c t) eps:
        eps = x + (1 - t) v and x_0 = c x - (sigma_min + c t) v, without dividing by anything."""
        return (1.0 - self.sigma_min) * x - point.sigma * output, x + point.alpha * output

    def describe(self) -> str:
        coupling = ", OT coupling" if self.coupling == "ot" else ""
        times = "" if self.time_sampling == "uniform" else f", logit-normal t ({self.logit_mean:g}, {self.logit_std:g})"
        return f"flow matching (sigma_min={self.sigma_min:g}{times}{coupling})"

