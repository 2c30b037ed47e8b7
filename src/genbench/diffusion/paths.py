"""Probability paths: how noise is added in training and how a network's output becomes a denoised estimate.

Every path here is Gaussian: at each point of it, x = alpha x_0 + sigma eps with eps ~ N(0, I) (Kingma et al. 2021's
notation; DDPM's alpha_bar is alpha^2). A path owns three things and nothing else (the split of NVlabs/edm: the net,
its preconditioning, the loss and the sampler are apart; and of facebookresearch/flow_matching: the path apart from
the ODE solver):

* the **training target**: which points it draws and what the network should output there (``loss``);
* the **denoiser**: the network's output at a point turned into estimates of x_0 and eps (``to_x0_eps``), which is
  all a solver sees;
* the **time grid** a solver steps through (``grid``), and any point between (``at``), with what the network is
  given as its time input there (``Point.time``).

A solver steps in the frame the path names (``frame``): ``"ve"`` is Karras et al. 2022's variance-exploding view,
y = x / alpha against tau = sigma / alpha (the diffusion paths); ``"linear"`` is a flow's y = x against its time
tau = t, for a path whose alpha and sigma are affine in t (rectified flow: alpha = 1 - t, sigma = t). In both,
y = a(tau) x_0 + b(tau) eps with a and b affine in tau, so the ODE's velocity is ``da * x_0 + db * eps`` with the
constant slopes the path gives (``slopes``; ``FRAMES`` has the usual ones).

Where the network's input lives (pixels, or a frozen autoencoder's latent) is the space's business
(:mod:`genbench.diffusion.spaces`), not the path's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.schema.types import Float, PositiveFloat

# frame -> (da/dtau, db/dtau): the velocity dy/dtau = da x_0 + db eps in that frame
FRAMES: dict[str, tuple[float, float]] = {"ve": (0.0, 1.0), "linear": (-1.0, 1.0)}


@dataclass(frozen=True)
class Point:
    """One point of a path: x = alpha x_0 + sigma eps there, and ``time``, what the network is given as its time
    input (an int: a DDPM timestep the path trained on exactly; a float: a point between)."""

    alpha: float
    sigma: float
    time: float | int


@dataclass(frozen=True)
class Grid:
    """The points a solver visits, noisiest first, each with its frame time ``taus[i]``; the last point is the data
    (alpha 1, sigma 0, the network never called there)."""

    points: tuple[Point, ...]
    taus: tuple[float, ...]
    frame: str
    slopes: tuple[float, float] = (0.0, 1.0)  # (da/dtau, db/dtau) of the frame

    @property
    def steps(self) -> int:
        return len(self.points) - 1

    def last(self, steps: int) -> Grid:
        """The grid's last ``steps`` steps: where an image prompt (SDEdit) starts partway down (0: the data point)."""
        return replace(self, points=self.points[len(self.points) - steps - 1 :], taus=self.taus[len(self.taus) - steps - 1 :])


class Path(nn.Module):
    """The interface every path implements; see the module's docstring."""

    frame: ClassVar[str] = "ve"

    @property
    def slopes(self) -> tuple[float, float]:
        """(da/dtau, db/dtau) in the path's frame."""
        return FRAMES[self.frame]

    def loss(self, net: Callable[..., Tensor], x0: Tensor, labels: Tensor | None) -> Tensor:
        """The training loss of one batch (a scalar)."""
        raise NotImplementedError

    def grid(self, steps: int, sigma_max: float | None = None) -> Grid:
        """``steps`` solver steps from the noisiest point (or the last at or below ``sigma_max``, in Karras's sigma
        = sigma / alpha) to the data."""
        raise NotImplementedError

    def at(self, tau: float) -> Point:
        """The point at frame time ``tau``, for solvers that step between grid points (midpoint, dopri5)."""
        raise NotImplementedError

    def to_x0_eps(self, output: Tensor, x: Tensor, point: Point) -> tuple[Tensor, Tensor]:
        """The network's ``output`` at ``x`` (a point of this path) as (x_0, eps) estimates."""
        raise NotImplementedError

    def net_input(self, x: Tensor, point: Point) -> Tensor:
        """What the network is given at ``x`` (a path may precondition it, as EDM's c_in)."""
        return x

    def start(self, noise: Tensor, grid: Grid) -> Tensor:
        """x at the grid's first point from standard normal ``noise``: its sigma times the noise (the data's share
        there is negligible: where it is not, the path starts the chain at noise scaled so)."""
        return noise * grid.points[0].sigma

    def smallest_tau(self) -> float:
        """The least frame time at which the network may be called (an ODE solver integrates down to it)."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """Karras et al. 2022 eq. 5: ``steps`` sigmas from sigma_max down to sigma_min, denser near sigma_min as rho
    grows; the grid then ends at sigma = 0."""
    if steps == 1:
        return [sigma_max]
    inv = [sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
           for i in range(steps)]  # fmt: skip
    return [v**rho for v in inv]


class EDMPath(Path):
    """Karras et al. 2022 ("Elucidating the design space", EDM): x = x_0 + sigma eps (alpha = 1), the network
    preconditioned as D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Table 1, "ours"), trained at log-normal
    sigmas, ln sigma ~ N(p_mean, p_std^2), with the loss weight lambda(sigma) = 1 / c_out^2 that makes every
    sigma's target unit-variance. Sampling visits eq. 5's sigmas (rho = 7) from ``sigma_max`` down.

    ``sigma_data`` is the data's standard deviation: 0.5 is EDM's for images in [-1, 1]; a latent space scaled to
    unit variance wants 1.0. The network's time input is c_noise = ln(sigma) / 4 of the paper, times 1000 so that
    genbench's U-Net (sinusoidal embedding built for DDPM's timesteps 0..999) resolves it.
    """

    frame = "ve"

    def __init__(
        self,
        sigma_min: PositiveFloat = 0.002,
        sigma_max: PositiveFloat = 80.0,
        sigma_data: PositiveFloat = 0.5,
        rho: PositiveFloat = 7.0,
        p_mean: Float = -1.2,
        p_std: PositiveFloat = 1.2,
    ) -> None:
        super().__init__()
        if not sigma_min < sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        self.sigma_min, self.sigma_max, self.sigma_data, self.rho = sigma_min, sigma_max, sigma_data, rho
        self.p_mean, self.p_std = p_mean, p_std

    def _coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = 250 * sigma.log()  # ln(sigma) / 4, times 1000
        return c_skip, c_out, c_in, c_noise

    def loss(self, net, x0, labels):
        shape = (-1,) + (1,) * (x0.ndim - 1)
        sigma = (torch.randn(x0.shape[0], device=x0.device) * self.p_std + self.p_mean).exp()
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        noisy = x0 + sigma.view(shape) * torch.randn_like(x0)
        output = net(c_in.view(shape) * noisy, c_noise, labels).float()
        # lambda(sigma) ||D - x_0||^2 with lambda = 1 / c_out^2 is ||F - target||^2 for this effective target (eq. 8)
        target = (x0 - c_skip.view(shape) * noisy) / c_out.view(shape)
        return F.mse_loss(output, target)

    def grid(self, steps, sigma_max=None):
        top = self.sigma_max if sigma_max is None else min(float(sigma_max), self.sigma_max)
        if not top > self.sigma_min:
            raise ValueError(f"sigma_max={sigma_max} is not above the path's sigma_min={self.sigma_min}")
        sigmas = karras_sigmas(steps, self.sigma_min, top, self.rho) + [0.0]
        points = tuple(self.at(s) for s in sigmas[:-1]) + (Point(1.0, 0.0, 0.0),)
        return Grid(points, tuple(sigmas), self.frame, self.slopes)

    def at(self, tau):
        return Point(1.0, float(tau), 250 * math.log(tau) if tau > 0 else 0.0)

    def smallest_tau(self) -> float:
        return self.sigma_min

    def to_x0_eps(self, output, x, point):
        sigma = torch.tensor(point.sigma, dtype=torch.float64)
        c_skip, c_out, _, _ = (float(c) for c in self._coefficients(sigma))
        x0 = c_skip * x + c_out * output
        return x0, (x - x0) / point.sigma

    def net_input(self, x: Tensor, point: Point) -> Tensor:
        c_in = 1 / math.sqrt(point.sigma**2 + self.sigma_data**2)
        return c_in * x

    def describe(self) -> str:
        return f"EDM (sigma in [{self.sigma_min:g}, {self.sigma_max:g}], sigma_data={self.sigma_data:g})"
