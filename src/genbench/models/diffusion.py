"""Denoising diffusion: a UNet learns to predict the noise (or v) added by the schedule."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genbench.diffusion.samplers import build_sampler, guided
from genbench.diffusion.schedule import NoiseSchedule
from genbench.errors import GenbenchError
from genbench.models.base import GenerativeModule


def diffusion_loss(net: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Ho et al. 2020 eq. 14 (simple loss): MSE between the network output and the eps (or v) target."""
    t = schedule.sample_timesteps(x0.shape[0], x0.device)
    noise = torch.randn_like(x0)
    prediction = net(schedule.add_noise(x0, noise, t), t, labels)
    return F.mse_loss(prediction.float(), schedule.training_target(x0, noise, t))


class DiffusionModule(GenerativeModule):
    family = "diffusion"

    def __init__(
        self,
        net: Callable[..., nn.Module],
        schedule: NoiseSchedule,
        optimizer: Callable[..., torch.optim.Optimizer],
        label_dropout: float = 0.1,
        **base,
    ):
        super().__init__(**base)
        channels, size, _ = self.image_shape
        self.net = net(image_channels=channels, image_size=size, num_classes=self.num_classes)
        self.schedule = schedule
        self.optimizer_factory = optimizer
        self.label_dropout = label_dropout
        self.train_net = self.maybe_compile(self.net)
        self.setup_ema()

    def sampling_network(self) -> nn.Module:
        return self.net

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.num_classes is not None:
            # Classifier-free guidance: with p = label_dropout the label becomes the null class (index num_classes).
            drop = torch.rand(labels.shape, device=labels.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        else:
            labels = None
        loss = diffusion_loss(self.train_net, self.schedule, images, labels)
        self.log_losses({"loss": loss})
        return loss

    def configure_optimizers(self):
        return self.optimizer_factory(self.net.parameters())

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        generator: torch.Generator | None = None,
        sampler: str = "ddim",
        steps: int = 50,
        eta: float | None = None,
        guidance_scale: float = 1.0,
        progress: bool = False,
    ) -> torch.Tensor:
        try:
            chosen = build_sampler(sampler, int(steps), **({} if eta is None else {"eta": float(eta)}))
        except ValueError as exc:
            raise GenbenchError(f"sampler: {exc}") from exc
        if chosen.steps > self.schedule.num_timesteps:
            raise GenbenchError(f"sampler.steps={steps} exceeds the {self.schedule.num_timesteps} training timesteps")
        net = self.ema.module
        labels = self.resolve_labels(n, labels, generator)
        if labels is None:
            model_fn = (lambda x, t: net(x, t, None))
        else:
            model_fn = guided(net, labels, null_label=self.num_classes, guidance_scale=float(guidance_scale))
        noise = self.randn(n, *self.image_shape, generator=generator)
        return chosen(model_fn, self.schedule, noise, generator=generator, progress=progress)
