"""DCGAN generator and discriminator (Radford et al. 2016), optionally class-conditional.

The discriminator has no batch norm, so WGAN-GP's per-sample gradient penalty (Gulrajani et al. 2017)
stays valid, and can be spectrally normalised (Miyato et al. 2018). Its conditional form is the
projection discriminator of Miyato & Koyama (2018).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from genbench.schema.types import Flag, PositiveInt

# image size -> (side of the first feature map, number of stride-2 stages between it and the image)
_LAYOUTS = {28: (7, 2), 32: (4, 3), 64: (4, 4)}


def layout(image_size: int) -> tuple[int, int]:
    """Return (start side, number of 2x stages) for a supported image size, else raise ValueError."""
    if image_size not in _LAYOUTS:
        supported = ", ".join(str(size) for size in _LAYOUTS)
        raise ValueError(f"image_size must be one of {supported}, got {image_size}")
    return _LAYOUTS[image_size]


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: conv/linear weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def check_labels(labels: Tensor | None, num_classes: int | None, n: int) -> None:
    """Labels are required by a conditional network and refused by an unconditional one. A label is a class id, or
    (floating point, shape (n, num_classes)) weights over the classes: an image prompt's inversion optimises them,
    and moves them from the image's class toward a prompt's (:mod:`genbench.prompts`)."""
    if num_classes is None:
        if labels is not None:
            raise ValueError("this network is unconditional (num_classes=None): pass labels=None")
        return
    if labels is None:
        raise ValueError(f"this network is class-conditional ({num_classes} classes): labels are required")
    if labels.is_floating_point():
        if labels.shape != (n, num_classes):
            raise ValueError(f"class weights must have shape ({n}, {num_classes}), got {tuple(labels.shape)}")
    elif labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")


def embed(table: nn.Embedding, labels: Tensor) -> Tensor:
    """``table``'s rows for class ids, or their weighted sum for class weights (see :func:`check_labels`)."""
    if labels.is_floating_point():
        return labels.to(table.weight.dtype) @ table.weight
    return table(labels)


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Class ids as one-hot rows; class weights as they are."""
    if labels.is_floating_point():
        return labels.to(dtype)
    return torch.nn.functional.one_hot(labels, num_classes).to(dtype)


class Generator(nn.Module):
    """z (and a class embedding, concatenated to it) -> linear -> 2x transposed-conv stages -> tanh image."""

    def __init__(
        self,
        latent_dim: PositiveInt = 128,
        image_channels: int = 1,
        image_size: int = 32,
        base_channels: PositiveInt = 64,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        start, stages = layout(image_size)
        self.latent_dim = latent_dim
        self.image_channels = image_channels
        self.image_size = image_size
        self.num_classes = num_classes
        widths = [base_channels * 2 ** (stages - 1 - i) for i in range(stages)]
        self._start = (widths[0], start)

        self.label_embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        in_features = latent_dim * (2 if num_classes else 1)
        self.project = nn.Linear(in_features, widths[0] * start * start, bias=False)
        self.project_norm = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = [nn.ReLU(inplace=True)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], image_channels, 4, stride=2, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        check_labels(labels, self.num_classes, z.shape[0])
        if self.label_embed is not None:
            z = torch.cat([z, embed(self.label_embed, labels)], dim=1)
        channels, side = self._start
        h = self.project(z).view(-1, channels, side, side)
        return self.body(self.project_norm(h))


class Discriminator(nn.Module):
    """Image -> stride-2 convs with LeakyReLU(0.2) -> flattened features h -> one raw logit per image.

    Conditional (projection discriminator, Miyato & Koyama 2018 eq. 3): logit = linear(h) + <embed(y), h>.
    With ``spectral_norm`` every conv, linear and the class embedding is spectrally normalised,
    as in the paper's released model.
    """

    def __init__(
        self,
        image_channels: int = 1,
        image_size: int = 32,
        base_channels: PositiveInt = 64,
        num_classes: int | None = None,
        spectral_norm: Flag = True,
    ) -> None:
        super().__init__()
        side, stages = layout(image_size)
        self.image_channels = image_channels
        self.image_size = image_size
        self.num_classes = num_classes
        widths = [image_channels] + [base_channels * 2**i for i in range(stages)]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers, nn.Flatten())
        feature_dim = widths[-1] * side * side
        self.linear = nn.Linear(feature_dim, 1)
        self.label_embed = nn.Embedding(num_classes, feature_dim) if num_classes else None
        self.apply(dcgan_init)
        if spectral_norm:
            for module in list(self.modules()):
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    _spectral_norm(module)

    def image_features(self, x: Tensor) -> Tensor:
        """h, the features the logit is read from (an image prompt's GAN inversion matches them)."""
        return self.features(x)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        check_labels(labels, self.num_classes, x.shape[0])
        h = self.features(x)
        logit = self.linear(h).squeeze(1)
        if self.label_embed is not None:
            logit = logit + (embed(self.label_embed, labels) * h).sum(dim=1)
        return logit
