"""The variance-preserving path of DDPM: the forward process q(x_t | x_0) on T discrete timesteps, with eps or v
prediction. One object serves training (``loss``, ``add_noise``) and the solvers (``grid``, ``to_x0_eps``).

Notation follows Ho et al. 2020: beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s,
with t = 0 .. T-1 indexing the T noising steps. As a :class:`~genbench.diffusion.paths.Path` a timestep is the point
alpha = sqrt(alpha_bar_t), sigma = sqrt(1 - alpha_bar_t); solvers step in Karras's frame (``"ve"``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from genbench.diffusion.paths import Grid, Path, Point
from genbench.schema.types import OpenUnit, PositiveInt

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Ho et al. 2020 sec. 4: betas evenly spaced from beta_start to beta_end (1e-4 .. 0.02 for T = 1000)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_alpha_bar(t: Tensor, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal 2021 eq. 17: alpha_bar = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) * pi/2).

    ``t`` is the normalised time t/T in [0, 1].
    """
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021 sec. 3.2: beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), clipped at 0.999 near t = T."""
    grid = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = cosine_alpha_bar(grid)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


class NoiseSchedule(Path):
    """Betas and their derived products as (non-persistent, float32) buffers that follow the module's device.

    ``prediction`` says what the network outputs: ``"eps"`` (Ho et al. 2020) or ``"v"`` = sqrt(alpha_bar) eps -
    sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022 sec. 4). The products are computed in float64 and then stored.
    """

    def __init__(
        self,
        num_timesteps: PositiveInt = 1000,
        kind: Literal["linear", "cosine"] = "linear",
        beta_start: OpenUnit = 1e-4,
        beta_end: OpenUnit = 0.02,
        prediction: Literal["eps", "v"] = "eps",
    ) -> None:
        super().__init__()
        if kind not in SCHEDULES:
            raise ValueError(f"schedule kind must be one of {', '.join(SCHEDULES)}, got {kind!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        if kind == "linear" and not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
        self.num_timesteps = num_timesteps
        self.kind = kind
        self.prediction = prediction

        betas = linear_betas(num_timesteps, beta_start, beta_end) if kind == "linear" else cosine_betas(num_timesteps)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)

        def buffer(name: str, value: Tensor) -> None:
            self.register_buffer(name, value.float(), persistent=False)

        buffer("betas", betas)  # beta_t
        buffer("alphas_cumprod", alphas_cumprod)  # alpha_bar_t = prod_{s<=t} (1 - beta_s), Ho eq. 4
        buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt())  # sqrt(alpha_bar_t): the signal scale of x_t
        buffer("sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).sqrt())  # sqrt(1 - alpha_bar_t): the noise scale
        # sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t): the noise level of x_t / sqrt(alpha_bar_t), the variance-
        # exploding view of the same process that the ODE solvers step in (Karras et al. 2022 sec. 2, Table 1)
        buffer("sigmas", ((1 - alphas_cumprod) / alphas_cumprod).sqrt())

    @staticmethod
    def _at(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """values[t], shaped to broadcast against ``like`` ([N] -> [N, 1, 1, ...])."""
        picked = values.to(like.device)[t.to(like.device).long()]
        return picked.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)

    def sample_timesteps(self, n: int, device: torch.device | str, generator: torch.Generator | None = None) -> Tensor:
        """n timesteps drawn uniformly from {0, ..., T-1}, as in Ho et al. 2020 Algorithm 1."""
        return torch.randint(0, self.num_timesteps, (n,), device=device, generator=generator)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, a sample of q(x_t | x_0) (Ho eq. 4)."""
        signal, sigma = self._at(self.sqrt_alphas_cumprod, t, x0), self._at(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return signal * x0 + sigma * noise

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output at x_t: eps, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0."""
        if self.prediction == "eps":
            return noise
        signal, sigma = self._at(self.sqrt_alphas_cumprod, t, x0), self._at(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return signal * noise - sigma * x0

    def predict_x0_eps(self, model_output: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Invert the parameterisation: (x_0 estimate, eps estimate) from the network's output at (x_t, t)."""
        signal, sigma = self._at(self.sqrt_alphas_cumprod, t, x_t), self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if self.prediction == "eps":
            eps = model_output
            return (x_t - sigma * eps) / signal, eps  # Ho eq. 4 solved for x_0
        # Salimans & Ho 2022 sec. 4, using signal^2 + sigma^2 = 1
        return signal * x_t - sigma * model_output, sigma * x_t + signal * model_output

    # ------------------------------------------------------------------ as a Path
    frame = "ve"

    def loss(self, net, x0: Tensor, labels: Tensor | None) -> Tensor:
        """Ho et al. 2020 eq. 14 (simple loss): MSE between the network output and the eps (or v) target, at
        timesteps drawn uniformly (Algorithm 1)."""
        t = self.sample_timesteps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        prediction = net(self.add_noise(x0, noise, t), t, labels)
        return F.mse_loss(prediction.float(), self.training_target(x0, noise, t))

    def grid(self, steps: int, sigma_max: float | None = None) -> Grid:
        """Trailing spacing (``spaced_timesteps``) over 0 .. ``first_timestep``, then the data."""
        timesteps = spaced_timesteps(first_timestep(self, sigma_max) + 1, steps)
        alpha_bars = [float(a) for a in self.alphas_cumprod.double().cpu()[timesteps]] + [1.0]
        points = tuple(Point(ab**0.5, (1 - ab) ** 0.5, int(t)) for ab, t in zip(alpha_bars, timesteps))
        points += (Point(1.0, 0.0, -1),)
        # Karras's sigma, sqrt((1 - alpha_bar) / alpha_bar), as the ``sigmas`` table has it
        taus = tuple(math.sqrt((1 - ab) / ab) for ab in alpha_bars)
        return Grid(points, taus, self.frame, self.slopes)

    def at(self, tau: float) -> Point:
        """The point at Karras sigma ``tau``, its timestep fractional: interpolated in log sigma between the two
        timesteps around it (as diffusers' schedulers place sigmas between timesteps)."""
        log_sigmas = self.sigmas.double().cpu().log()
        log_tau = math.log(tau)
        above = int(torch.searchsorted(log_sigmas, torch.tensor([log_tau], dtype=torch.float64)).clamp(1, len(log_sigmas) - 1))
        low, high = float(log_sigmas[above - 1]), float(log_sigmas[above])
        t = above - 1 + min(max((log_tau - low) / (high - low), 0.0), 1.0)
        alpha = 1 / math.sqrt(1 + tau * tau)
        return Point(alpha, tau * alpha, float(t))

    def smallest_tau(self) -> float:
        return float(self.sigmas.double()[0])

    def start(self, noise: Tensor, grid: Grid) -> Tensor:
        """Pure noise: at the cosine schedule's T-1 the signal's share is 5e-5 (alpha_bar 2.4e-9)."""
        return noise

    def to_x0_eps(self, output: Tensor, x: Tensor, point: Point) -> tuple[Tensor, Tensor]:
        if isinstance(point.time, int):  # a timestep: the schedule's own float32 tables, as in training
            t = torch.full((x.shape[0],), point.time, dtype=torch.long, device=x.device)
            return self.predict_x0_eps(output, x, t)
        signal, sigma = point.alpha, point.sigma
        if self.prediction == "eps":
            return (x - sigma * output) / signal, output
        return signal * x - sigma * output, sigma * x + signal * output

    def describe(self) -> str:
        return f"VP {self.kind} schedule, T={self.num_timesteps}, {self.prediction}-prediction"


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
