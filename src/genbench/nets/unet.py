"""The diffusion denoiser: a DDPM-style U-Net (Ho et al. 2020) with the refinements of Dhariwal & Nichol 2021.

Residual blocks take the time (and class) embedding as a GroupNorm scale and shift ("AdaGN"), self-attention
runs at the listed resolutions and in the middle, and every block's last layer starts at zero so the
network starts as a near-identity on its skip path and outputs exactly zero.
Class conditioning keeps one extra embedding row, index ``num_classes``, as the null label that
classifier-free guidance (Ho & Salimans 2022) trains and samples with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Interval, MinLen
from pydantic import Strict
from torch import Tensor, nn

from genbench.schema.types import Flag, NonNegativeInt, PositiveInt


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= 32 that divides ``channels`` and leaves >= 4 channels a group.

    Wu & He (2018) found groups of a single channel (instance norm) clearly worse, which a flat 32 would
    give the 32-channel layers of the small CPU configurations.
    """
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


def zero_init(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer position encoding of (possibly fractional) timesteps, [N] -> [N, dim] (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(embedding, (0, dim % 2))


class ResBlock(nn.Module):
    """Pre-activation residual block taking the embedding as a GroupNorm scale and shift (``scale_shift``, AdaGN of
    Dhariwal & Nichol 2021 sec. 3) or as a per-channel bias added before the second norm (Ho et al. 2020)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, scale_shift: bool = True) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, (2 if scale_shift else 1) * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.emb(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift  # AdaGN, Dhariwal & Nichol 2021 sec. 3
        else:
            h = self.norm2(h + emb)  # DDPM's ResnetBlock (Ho et al. 2020, their released model)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the channel count ({channels}) where attention runs")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, h * w)
        # contiguous head_dim keeps CPU SDPA on its fused kernel instead of the slower math fallback
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(dim=1)  # each [n, heads, h*w, head_dim]
        if q.device.type == "cpu" and q.dtype != torch.float32:
            # torch's CPU flash-attention backward in bf16 ran 14x slower than in fp32 at this layer's sizes (22 ms
            # against 1.6 ms per call, 64 images of 7x7 tokens, AMX Xeon, torch 2.14): the bf16 step was slower than
            # the fp32 one. The attention itself is cheap, so it runs in fp32 there; convolutions stay bf16.
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class ResAttnBlock(nn.Module):
    """A residual block, followed by self-attention when ``attention``."""

    def __init__(self, in_channels, out_channels, emb_dim, dropout, attention: bool, num_heads: int,
                 scale_shift: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_dim, dropout, scale_shift)
        self.attn = SelfAttention(out_channels, num_heads) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.res(x, emb)
        return self.attn(h) if self.attn is not None else h


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def level_sizes(image_size: int, num_levels: int) -> list[int]:
    """Side of each U-Net level's feature maps: the input zero-padded up to a multiple of ``2**(num_levels - 1)``,
    then halved per level (28 px with three levels: 28, 14, 7; with four levels: 32, 16, 8, 4)."""
    multiple = 2 ** (num_levels - 1)
    side = math.ceil(image_size / multiple) * multiple
    return [side // 2**level for level in range(num_levels)]


def attention_sides(
    image_size: int, channel_mults: Sequence[int], attention_resolutions: Sequence[int] | None,
    attention_levels: Sequence[int] | None,
) -> set[int]:
    """The level sides that get self-attention, given as sides in pixels or as level indices (exactly one of them).

    Every listed side or level must exist at this image size: one that does not would add no attention and leave the
    network other than configured without a word (the 28 px default's side 7 at 32 px, whose levels are 32, 16, 8).
    Level indices name the same place at every image size, so one config serves 28, 32 and 64 px data.
    """
    if (attention_resolutions is None) == (attention_levels is None):
        raise ValueError("give attention_resolutions (level sides in pixels) or attention_levels (level indices, "
                         "0 = full size), and set the other to null")  # fmt: skip
    sizes = level_sizes(image_size, len(channel_mults))
    if attention_levels is not None:
        missing = [int(level) for level in attention_levels if not 0 <= level < len(sizes)]
        if missing:
            raise ValueError(f"attention_levels {missing} do not exist: channel_mults gives levels 0 to {len(sizes) - 1}")
        return {sizes[level] for level in attention_levels}
    missing = [int(side) for side in attention_resolutions if side not in sizes]
    if missing:
        raise ValueError(f"attention_resolutions {missing} do not occur at image size {image_size} with "
                         f"{len(channel_mults)} levels (channel_mults); the level sides are {sizes}")  # fmt: skip
    return {int(side) for side in attention_resolutions}


class UNet(nn.Module):
    """eps- or v-predicting U-Net: ``forward(x, t, labels=None)`` returns a tensor shaped like ``x``.

    Level ``i`` runs at ``padded_size / 2**i`` pixels with ``base_channels * channel_mults[i]`` channels, where
    the input is zero-padded (bottom/right) to a multiple of ``2**(len(channel_mults) - 1)`` and the output
    cropped back (``level_sizes``). Self-attention runs at the levels named by ``attention_resolutions`` (sides in
    pixels) or ``attention_levels`` (indices), and each must exist (``attention_sides``): at 28 px with
    ``channel_mults=(1, 2, 2)`` the sides are 28, 14 and 7, at 32 px 32, 16 and 8, so level 2 is side 7 or 8; with four
    levels 28 px is padded to 32 and side 16 serves both. The middle block always attends.
    ``scale_shift=False`` with ``num_heads=1``, 128 x (1, 2, 2, 2), two blocks, attention at 16 and dropout 0.1 is
    the DDPM CIFAR-10 network of Ho et al. 2020 (35.7M parameters, conf/model/size/paper).
    """

    def __init__(
        self,
        image_channels: int = 1,
        image_size: int = 32,
        base_channels: PositiveInt = 64,
        channel_mults: Annotated[Sequence[PositiveInt], MinLen(1)] = (1, 2, 2),
        num_res_blocks: PositiveInt = 2,
        attention_resolutions: Sequence[PositiveInt] | None = (16,),
        dropout: Annotated[float, Strict(), Interval(ge=0, lt=1)] = 0.1,
        num_classes: int | None = None,
        num_heads: PositiveInt = 4,
        scale_shift: Flag = True,
        attention_levels: Sequence[NonNegativeInt] | None = None,
    ) -> None:
        super().__init__()
        if not channel_mults or num_res_blocks < 1:
            raise ValueError("channel_mults must be non-empty and num_res_blocks >= 1")
        attend_at = attention_sides(image_size, channel_mults, attention_resolutions, attention_levels)
        self.image_channels = image_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.base_channels = base_channels
        self.multiple = 2 ** (len(channel_mults) - 1)
        emb_dim = 4 * base_channels

        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # index num_classes is the null label of classifier-free guidance
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.stem = nn.Conv2d(image_channels, base_channels, 3, padding=1)

        def block(c_in: int, c_out: int, resolution: int) -> ResAttnBlock:
            attend = resolution in attend_at
            return ResAttnBlock(c_in, c_out, emb_dim, dropout, attend, num_heads, scale_shift)

        resolution = level_sizes(image_size, len(channel_mults))[0]
        channels = base_channels
        skip_channels = [channels]
        self.encoder = nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.encoder.append(block(channels, base_channels * mult, resolution))
                channels = base_channels * mult
                skip_channels.append(channels)
            if level != len(channel_mults) - 1:
                self.encoder.append(Downsample(channels))
                skip_channels.append(channels)
                resolution //= 2

        self.middle = ResAttnBlock(channels, channels, emb_dim, dropout, True, num_heads, scale_shift)
        self.middle_out = ResBlock(channels, channels, emb_dim, dropout, scale_shift)

        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.decoder.append(block(channels + skip_channels.pop(), base_channels * mult, resolution))
                channels = base_channels * mult
            if level != 0:
                self.decoder.append(Upsample(channels))
                resolution *= 2

        self.head = nn.Sequential(
            group_norm(channels), nn.SiLU(), zero_init(nn.Conv2d(channels, image_channels, 3, padding=1))
        )

    def embed(self, t: Tensor, labels: Tensor | None, n: int) -> Tensor:
        t = t.expand(n) if t.ndim == 0 else t
        emb = self.time_mlp(sinusoidal_embedding(t, self.base_channels))
        if self.label_embed is None and labels is not None:
            raise ValueError("this U-Net is unconditional (num_classes=None): pass labels=None")
        if self.label_embed is not None:
            if labels is None:
                labels = torch.full((n,), self.num_classes, dtype=torch.long, device=emb.device)
            emb = emb + self.label_embed(labels)
        return emb

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        emb = self.embed(t, labels, x.shape[0])

        h = self.stem(x)
        skips = [h]
        for module in self.encoder:
            h = module(h, emb) if isinstance(module, ResAttnBlock) else module(h)
            skips.append(h)
        h = self.middle_out(self.middle(h, emb), emb)
        for module in self.decoder:
            if isinstance(module, ResAttnBlock):
                h = module(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = module(h)
        return self.head(h)[..., :height, :width]
