"""The latent space of latent diffusion (Rombach et al. 2022): a KL autoencoder that the latent model trains as its
first stage and then freezes, with the latent scale taken from the data.

Stage 1 (the run's first ``train_images`` images): the autoencoder learns to reconstruct, L1 plus a small KL to
N(0, I) (``kl_weight``, LDM's KL-f4 uses 1e-6). At the first step after it, the autoencoder is frozen and the latent
scale is set to 1 / std of that batch's latents (CompVis LDM's ``scale_by_std``). From then on the denoiser trains on
scaled latents, and sampling decodes them. Everything is charged to the run's one budget: the autoencoder's images
and seconds are the run's own, counted in ``images_seen`` and the train time, and its parameters in ``params``
(run.json also breaks them out under ``stages``). The autoencoder's weights and the scale live in the run's
checkpoint, so a run resumes, samples and scores with the autoencoder it trained.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genbench.diffusion.spaces import Space
from genbench.schema.types import NonNegativeFloat, NonNegativeInt, PositiveFloat


class LatentSpace(Space):
    clips = False  # a latent has no known range: nothing to clip the x_0 estimates to

    def __init__(
        self,
        autoencoder: Callable[..., nn.Module],
        train_images: NonNegativeInt = 100_000,
        kl_weight: NonNegativeFloat = 1e-5,
        lr: PositiveFloat = 1e-3,
    ) -> None:
        super().__init__()
        self.autoencoder_factory = autoencoder
        self.train_images, self.kl_weight, self.lr = train_images, kl_weight, lr
        self.register_buffer("scale", torch.zeros(()))  # 0 until stage 1 ends; persistent: in every checkpoint
        self._ready = False  # the scale is set: asked every training step, so read from the device only until it is

    def build(self, image_shape: tuple[int, ...]) -> None:
        channels, size, _ = image_shape
        self.autoencoder = self.autoencoder_factory(image_channels=channels, image_size=size)

    def state_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.autoencoder.latent_channels, self.autoencoder.latent_size, self.autoencoder.latent_size)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.autoencoder.parameters())

    def in_stage(self, images_seen: int) -> bool:
        """Whether a batch after ``images_seen`` images trains the autoencoder (stage 1)."""
        return images_seen < self.train_images

    def stage_loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Stage 1's loss: per-image L1 reconstruction (summed over pixels) plus kl_weight times the KL to N(0, I)."""
        mu, logvar = self.autoencoder.encode(images)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        reconstruction = F.l1_loss(self.autoencoder.decode(z).float(), images, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1 - logvar.float()).flatten(1).sum(1)
        loss = (reconstruction + self.kl_weight * kl).mean()
        return loss, {"ae_loss": loss, "ae_reconstruction": reconstruction.mean(), "ae_kl": kl.mean()}

    def ready(self) -> bool:
        if not self._ready:  # a host sync, but only until the scale is set (or loaded from a checkpoint)
            self._ready = bool(self.scale > 0)
        return self._ready

    def prepare(self, images: Tensor) -> None:
        self.set_scale(images)

    def stage_record(self, images_seen: int) -> dict:
        return {"autoencoder": {"images": min(images_seen, self.train_images), "train_images": self.train_images,
                                "params": sum(p.numel() for p in self.autoencoder.parameters()),
                                "latent_shape": list(self.state_shape(())), "latent_scale": float(self.scale)}}  # fmt: skip

    @torch.no_grad()
    def set_scale(self, images: Tensor) -> None:
        """1 / std of the latents of ``images`` (scale_by_std), once, at the end of stage 1."""
        mu, logvar = self.autoencoder.encode(images)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        self.scale.fill_(1.0 / z.float().std().item())

    def encode(self, images: Tensor, posterior_sample: bool = True) -> Tensor:
        """A posterior sample of ``images``' latents, scaled: what the denoiser trains on (the autoencoder frozen);
        the posterior mean with ``posterior_sample=False``."""
        with torch.no_grad():
            mu, logvar = self.autoencoder.encode(images)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if posterior_sample else mu
        return z.float() * self.scale

    def decode(self, states: Tensor) -> Tensor:
        # a run stopped inside stage 1 has no scale yet: its (untrained) denoiser's latents are decoded unscaled
        # (chosen on the device: no host sync, and a meta twin can count the decoder's FLOPs)
        scale = torch.where(self.scale > 0, self.scale, torch.ones_like(self.scale))
        return self.autoencoder.decode(states / scale).float().clamp(-1, 1)

    def clip(self, x0: Tensor) -> Tensor:
        return x0
