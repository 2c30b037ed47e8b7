"""The ResNet GAN of SNGAN's CIFAR-10 experiments (Miyato et al. 2018, appendix B.4, table 4), optionally conditional.

Generator: z -> linear to a 4x4 (32 px) or 7x7 (28 px) map of ``base_channels`` -> one upsampling residual block per
2x stage -> BN, ReLU, 3x3 conv, tanh. Discriminator: two downsampling residual blocks (the first "optimized": no
activation before its first conv, pooling before the shortcut's 1x1 conv), two plain ones, ReLU, global sum pooling,
one linear logit; every layer spectrally normalised. With 256 generator and 128 discriminator channels at 32 px this is
the paper's network: 4.3M generator and 1.0M discriminator parameters (tests/test_presets.py).
Conditional: categorical conditional batch norm in the generator (per-class BN gains and biases, de Vries et al. 2017)
and the projection discriminator (Miyato & Koyama 2018 eq. 3), as in their ResNet cGANs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from genbench.schema.types import Flag, PositiveInt
from genbench.nets.dcgan import check_labels, embed, layout

DISCRIMINATOR_DOWNSAMPLINGS = 2  # 32 px -> 8x8 features before pooling, as in SNGAN's CIFAR discriminator


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose affine gain and bias are looked up per class (one shared pair when unconditional)."""

    def __init__(self, channels: int, num_classes: int | None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.norm = nn.BatchNorm2d(channels, affine=num_classes is None)
        if num_classes:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, labels: Tensor | None) -> Tensor:
        h = self.norm(x)
        if self.num_classes:
            h = h * embed(self.gain, labels)[:, :, None, None] + embed(self.bias, labels)[:, :, None, None]
        return h


class UpBlock(nn.Module):
    """BN, ReLU, 2x nearest upsampling, 3x3 conv, BN, ReLU, 3x3 conv; shortcut: upsampling, 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int | None) -> None:
        super().__init__()
        self.norm1 = ConditionalBatchNorm(in_channels, num_classes)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = ConditionalBatchNorm(out_channels, num_classes)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, labels: Tensor | None) -> Tensor:
        h = F.interpolate(F.relu(self.norm1(x, labels)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), labels)))
        return self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest")) + h


class DownBlock(nn.Module):
    """(ReLU), 3x3 conv, ReLU, 3x3 conv, (2x2 average pooling); a 1x1-conv shortcut where the shape changes.

    ``first``: SNGAN's optimized input block, which starts with the conv (the image needs no activation) and pools
    before its shortcut's conv.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, first: bool = False) -> None:
        super().__init__()
        self.downsample, self.first = downsample, first
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        learned = downsample or in_channels != out_channels
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if learned else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(x if self.first else F.relu(x))
        h = self.conv2(F.relu(h))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        shortcut = x
        if self.first:
            shortcut = self.skip(F.avg_pool2d(x, 2))
        elif self.skip is not None:
            shortcut = self.skip(x)
            shortcut = F.avg_pool2d(shortcut, 2) if self.downsample else shortcut
        return shortcut + h


class ResNetGenerator(nn.Module):
    def __init__(
        self,
        latent_dim: PositiveInt = 128,
        image_channels: int = 3,
        image_size: int = 32,
        base_channels: PositiveInt = 256,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        start, stages = layout(image_size)
        self.latent_dim = latent_dim
        self.image_channels = image_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self._start = start
        self.project = nn.Linear(latent_dim, base_channels * start * start)
        self.blocks = nn.ModuleList(UpBlock(base_channels, base_channels, num_classes) for _ in range(stages))
        self.head = nn.Sequential(
            nn.BatchNorm2d(base_channels), nn.ReLU(), nn.Conv2d(base_channels, image_channels, 3, padding=1), nn.Tanh()
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)  # the initialisation of SNGAN's released code
                nn.init.zeros_(module.bias)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        check_labels(labels, self.num_classes, z.shape[0])
        h = self.project(z).view(z.shape[0], -1, self._start, self._start)
        for block in self.blocks:
            h = block(h, labels)
        return self.head(h)


class ResNetDiscriminator(nn.Module):
    def __init__(
        self,
        image_channels: int = 3,
        image_size: int = 32,
        base_channels: PositiveInt = 128,
        num_classes: int | None = None,
        spectral_norm: Flag = True,
    ) -> None:
        super().__init__()
        layout(image_size)  # the same image sizes as the generator
        self.image_channels = image_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.blocks = nn.Sequential(
            DownBlock(image_channels, base_channels, downsample=True, first=True),
            *(DownBlock(base_channels, base_channels, downsample=True) for _ in range(DISCRIMINATOR_DOWNSAMPLINGS - 1)),
            DownBlock(base_channels, base_channels, downsample=False),
            DownBlock(base_channels, base_channels, downsample=False),
        )
        self.linear = nn.Linear(base_channels, 1)
        self.label_embed = nn.Embedding(num_classes, base_channels) if num_classes else None
        for module in list(self.modules()):  # a list: spectral_norm adds parametrization modules
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                nn.init.xavier_uniform_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
                if spectral_norm:
                    _spectral_norm(module)

    def image_features(self, x: Tensor) -> Tensor:
        """h, the pooled features the logit is read from (an image prompt's GAN inversion matches them)."""
        return F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        check_labels(labels, self.num_classes, x.shape[0])
        h = self.image_features(x)
        logit = self.linear(h).squeeze(1)
        if self.label_embed is not None:
            logit = logit + (embed(self.label_embed, labels) * h).sum(dim=1)
        return logit
