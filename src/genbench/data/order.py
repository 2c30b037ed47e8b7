"""The order of training batches: a pure function of (seed, epoch, batch index), so a resumed run continues it.

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
from torch.utils.data import BatchSampler, DistributedSampler


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from ``keys`` through numpy's SeedSequence, so neighbouring keys (seed 0 epoch 1,
    seed 1 epoch 0) give unrelated streams."""
    entropy = [int(k) & 0xFFFF_FFFF_FFFF_FFFF for k in keys]  # SeedSequence takes non-negative words
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))


class TrainOrder(DistributedSampler):
    """Yields one index tensor per training batch of this rank, from batch ``position()`` on to the epoch's end.

    Global batch ``k`` holds ``world_size * batch_size`` images; rank ``r`` takes the ``r``-th share, so ranks never
    see the same image in a step. It is a ``DistributedSampler`` so that Lightning, which would otherwise wrap a
    DataLoader's sampler in its own distributed one under DDP, leaves this order alone. Epochs drop the last partial
    batch, so every batch is full.
    """

    def __init__(self, n: int, batch_size: int, seed: int, position: Callable[[], int], rank: int = 0,
                 world_size: int = 1):  # fmt: skip
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.n, self.batch_size, self.position = n, batch_size, position
        self.per_epoch = n // (batch_size * world_size)

    def __len__(self) -> int:
        return self.per_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=seeded_generator(self.seed, epoch))

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.per_epoch == 0:
            return
        epoch, first = divmod(self.position(), self.per_epoch)
        order = self.permutation(epoch)
        share = self.batch_size
        for j in range(first, self.per_epoch):
            start = (j * self.num_replicas + self.rank) * share
            yield order[start : start + share]


class DeviceBatches:
    """Batches sliced from tensors already on the accelerator: no workers, no host-device copies.

    It walks the same sampler the DataLoader path uses (a :class:`TrainOrder`, or a ``BatchSampler`` for the
    evaluation splits), so both paths give the same batches for the same seed.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], sampler: TrainOrder | BatchSampler):
        self.tensors = tensors
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        device = self.tensors[0].device
        for indices in self.sampler:
            index = torch.as_tensor(indices, device=device)
            yield [t.index_select(0, index) for t in self.tensors]
