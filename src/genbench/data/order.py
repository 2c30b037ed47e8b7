"""The order of training batches: a pure function of (seed, epoch, batch index), so a resumed run continues it.

``data.batch_size`` is the global batch: the images one optimizer update sees, summed over every rank. Global batch
``k`` is the same set of images whatever the number of ranks; each rank trains its slice of it.

Epoch ``e`` is one permutation of the training images drawn from a generator seeded by ``(seed, e)`` alone, and
batch ``j`` of it is the ``j``-th slice. Iteration starts at the number of batches already trained, read when
iteration begins (not when the loader is built), so a run resumed from a checkpoint skips exactly the batches it
consumed. torchdata's StatefulDataLoader (which Lightning 2.x restores mid-epoch) also fast-forwards, but it counts
the batches it has *yielded*, and Lightning's prefetching yields one more than was trained when a checkpoint is
written; counting trained batches (``ImageDataModule.on_after_batch_transfer``) has no such gap.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from genbench.errors import GenbenchError


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from ``keys`` through numpy's SeedSequence, so neighbouring keys (seed 0 epoch 1,
    seed 1 epoch 0) give unrelated streams."""
    entropy = [int(k) & 0xFFFF_FFFF_FFFF_FFFF for k in keys]  # SeedSequence takes non-negative words
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))


def training_seed(seed: int, batch: int, rank: int) -> int:
    """The seed of the global torch RNG while rank ``rank`` trains global batch ``batch``: its noise, timesteps and
    dropout are its own (ranks train different images, so they must not share draws), and a resumed run draws what
    the uninterrupted one did without carrying RNG states."""
    return int(seeded_generator(seed, batch, rank, 2).initial_seed())


def seed_global_rng(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)`` for the generators a step on ``device`` draws from: the CPU's, and every CUDA
    device's when it trains on one. ``torch.manual_seed`` itself also seeds each other backend it can find, which
    costs ~0.1 ms per call; this runs once per training batch."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def evaluation_seed(seed: int, batch: int) -> int:
    """The seed of the global torch RNG for evaluation batch ``batch`` of a split (a VAE's posterior draw in its test
    ELBO): a function of the batch, not of the rank that happens to evaluate it, so one process and many agree."""
    return int(seeded_generator(seed, batch, 3).initial_seed())


def rank_share(global_batch: int, world_size: int) -> int:
    """Images per rank in a global batch; a global batch the ranks cannot share equally is refused."""
    if global_batch % world_size:
        raise GenbenchError(f"data.batch_size={global_batch} is the global batch (summed over all ranks) and must "
                            f"divide evenly among the {world_size} ranks; use a multiple of {world_size}")  # fmt: skip
    return global_batch // world_size


class TrainOrder(DistributedSampler):
    """Yields one index tensor per training batch of this rank, from batch ``position()`` on to the epoch's end.

    Global batch ``k`` holds ``batch_size`` images (the global batch); rank ``r`` takes the ``r``-th of
    ``world_size`` equal shares, so ranks never see the same image in a step and batch ``k`` is the same set of
    images on one rank or many. It is a ``DistributedSampler`` so that Lightning, which would otherwise wrap a
    DataLoader's sampler in its own distributed one under DDP, leaves this order alone. Epochs drop the last partial
    batch, so every batch is full.
    """

    def __init__(self, n: int, batch_size: int, seed: int, position: Callable[[], int], rank: int = 0,
                 world_size: int = 1):  # fmt: skip
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.n, self.batch_size, self.position = n, batch_size, position
        self.share = rank_share(batch_size, world_size)
        self.per_epoch = n // batch_size

    def __len__(self) -> int:
        return self.per_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=seeded_generator(self.seed, epoch))

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.per_epoch == 0:
            return
        epoch, first = divmod(self.position(), self.per_epoch)
        order = self.permutation(epoch)
        for j in range(first, self.per_epoch):
            start = j * self.batch_size + self.rank * self.share
            yield order[start : start + self.share]


class ShardedBatches(DistributedSampler):
    """Evaluation batches in the split's order, batch ``j`` on rank ``j % world_size`` (its ``i``-th batch is global
    batch ``i * world_size + rank``): every image on exactly one rank, none twice. Lightning's own DistributedSampler pads the last round with repeats so that ranks step
    together, which biases a metric summed over the split; a ``DistributedSampler`` subclass is left alone."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
        self.n, self.batch_size = n, batch_size
        self.batches = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)][rank::world_size]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start, stop in self.batches:
            yield torch.arange(start, stop)


class DeviceBatches:
    """Batches sliced from tensors already on the accelerator: no workers, no host-device copies.

    It walks the same sampler the DataLoader path uses (a :class:`TrainOrder`, or :class:`ShardedBatches` for the
    evaluation splits), so both paths give the same batches, and each rank its own share, for the same seed.
    """

    batch_sampler = None  # Lightning reads a loader's batch_sampler, then its sampler, to see whether it shuffles

    def __init__(self, tensors: tuple[torch.Tensor, ...], sampler: TrainOrder | ShardedBatches):
        self.tensors = tensors
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        device = self.tensors[0].device
        for indices in self.sampler:
            index = torch.as_tensor(indices, device=device)
            yield [t.index_select(0, index) for t in self.tensors]
