"""Convolutional VAE (Kingma & Welling 2014), optionally class-conditional (Sohn et al. 2015).

The decoder's output is unbounded: the training module reads it as Bernoulli logits or a Gaussian mean,
so the likelihood (and its squashing) lives with the loss, not the network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genbench.schema.types import PositiveInt
from genbench.nets.dcgan import check_labels, layout, one_hot
from genbench.nets.unet import group_norm


class ConvVAE(nn.Module):
    """Encoder: stride-2 convs to a 7x7 (28 px) or 4x4 map, then a linear head to (mu, logvar).

    Decoder: linear to that map, stride-2 transposed convs back to full size, a 3x3 conv to the image channels.
    Conditional: the label's one-hot vector joins the flattened encoder features and the latent code.
    """

    def __init__(
        self,
        image_channels: int = 1,
        image_size: int = 32,
        latent_dim: PositiveInt = 32,
        base_channels: PositiveInt = 32,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        side, stages = layout(image_size)
        self.image_channels = image_channels
        self.image_size = image_size
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        label_dim = num_classes or 0
        widths = [base_channels * 2**i for i in range(stages)]
        self._top = (widths[-1], side)
        feature_dim = widths[-1] * side * side

        encoder: list[nn.Module] = []
        for c_in, c_out in zip([image_channels] + widths[:-1], widths):
            encoder += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), group_norm(c_out), nn.SiLU()]
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        self.to_posterior = nn.Linear(feature_dim + label_dim, 2 * latent_dim)

        self.from_latent = nn.Linear(latent_dim + label_dim, feature_dim)
        decoder: list[nn.Module] = [nn.SiLU()]
        up_widths = widths[::-1] + [base_channels]
        for c_in, c_out in zip(up_widths[:-1], up_widths[1:]):
            decoder += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), group_norm(c_out), nn.SiLU()]
        decoder.append(nn.Conv2d(base_channels, image_channels, 3, padding=1))
        self.decoder = nn.Sequential(*decoder)

    def _with_label(self, h: Tensor, labels: Tensor | None) -> Tensor:
        check_labels(labels, self.num_classes, h.shape[0])
        if self.num_classes is None:
            return h
        return torch.cat([h, one_hot(labels, self.num_classes, h.dtype)], dim=1)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z|x[, y]) as (mu, logvar), each [N, latent_dim]."""
        mu, logvar = self.to_posterior(self._with_label(self.encoder(x), labels)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """p(x|z[, y])'s parameters, [N, C, S, S], unbounded."""
        channels, side = self._top
        h = self.from_latent(self._with_label(z, labels)).view(-1, channels, side, side)
        return self.decoder(h)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x, labels)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterisation, Kingma & Welling eq. 10
        return self.decode(z, labels), mu, logvar
