"""Noise that belongs to each image, not to the batch it happens to be drawn in.

A sampler that draws its noise from one generator per batch gives image 7 different noise at batch size 50
than at batch size 250, or on a GPU than on a CPU, so the images scored (and the score) would depend on things
that should not matter. :class:`IndexedNoise` gives every image its own stream, seeded by ``(seed, index)`` and
always drawn on the CPU, so image ``i`` of a run is the same image whatever the batch size or device.

Every place that draws sampling noise (the families' ``sample``, the samplers' fresh noise) goes
through :func:`randn` / :func:`randint`, which also accept a plain ``torch.Generator`` (or None) for callers
that do not need the guarantee (training, tests).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor


def stream_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image ``index`` of run ``seed``, mixed by numpy's SeedSequence so streams do not overlap."""
    words = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class IndexedNoise:
    """One CPU ``torch.Generator`` per image; draws land on ``device``.

    Each call draws one sample's worth from each image's stream in turn, so image ``i`` sees the same sequence of
    draws (initial noise, labels, a sampler's fresh noise per step) in any batch.
    """

    def __init__(self, seed: int, indices: Iterable[int], device: torch.device | str = "cpu"):
        self.seed = int(seed)
        self.indices = [int(i) for i in indices]
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(stream_seed(self.seed, i)) for i in self.indices]

    @classmethod
    def range(cls, seed: int, start: int, count: int, device: torch.device | str = "cpu") -> "IndexedNoise":
        return cls(seed, range(start, start + count), device)

    def __len__(self) -> int:
        return len(self.indices)

    def _check(self, n: int) -> None:
        if n != len(self):
            raise ValueError(f"asked for noise of {n} images from the streams of {len(self)}")

    def randn(self, n: int, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        self._check(n)
        draws = [torch.randn(shape, generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(draws).to(self.device)

    def randint(self, high: int, n: int) -> Tensor:
        self._check(n)
        draws = [torch.randint(high, (1,), generator=g) for g in self.generators]
        return torch.cat(draws).to(self.device)


Noise = IndexedNoise | torch.Generator | None


def randn(shape: tuple[int, ...] | torch.Size, noise: Noise, device: torch.device | str, dtype=torch.float32) -> Tensor:
    """Gaussian noise of ``shape`` (first dimension: images) on ``device``, from ``noise`` wherever it lives."""
    shape = tuple(shape)
    if isinstance(noise, IndexedNoise):
        return noise.randn(*shape, dtype=dtype).to(device)
    where = noise.device if noise is not None else device
    return torch.randn(shape, generator=noise, device=where, dtype=dtype).to(device)


def randn_like(x: Tensor, noise: Noise) -> Tensor:
    return randn(x.shape, noise, x.device, x.dtype)


def randint(high: int, n: int, noise: Noise, device: torch.device | str) -> Tensor:
    """``n`` integers in [0, high), one per image."""
    if isinstance(noise, IndexedNoise):
        return noise.randint(high, n).to(device)
    where = noise.device if noise is not None else device
    return torch.randint(high, (n,), generator=noise, device=where).to(device)
