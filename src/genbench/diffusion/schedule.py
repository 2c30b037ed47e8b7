"""The forward process q(x_t | x_0) of DDPM: one object serves training (``add_noise``) and the samplers.

Notation follows Ho et al. 2020: beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s,
with t = 0 .. T-1 indexing the T noising steps.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

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


class NoiseSchedule(nn.Module):
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
