"""Test-only callback for tests/test_ddp.py, put in a real run in place of the progress bar
(``callbacks.progress_bar._target_=ddp_probe.RankProbe``): each rank writes what it trained to
``RUN_DIR/probe/rank<r>.json``: a fingerprint of every image of every batch, the torch seed its step drew from, and
a checksum of each of its final parameters (EMA included)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytorch_lightning as pl
import torch


def image_fingerprints(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(image.detach().cpu().float().numpy().tobytes()).hexdigest()[:16] for image in images]


def weights_checksums(module: torch.nn.Module) -> dict[str, str]:
    """Parameters only (the EMA's included): DDP keeps those equal on every rank. Buffers such as BatchNorm's
    running statistics follow each rank's own batches and are copied from rank 0 at each step's start."""
    return {name: hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
            for name, tensor in module.named_parameters()}  # fmt: skip


class RankProbe(pl.Callback):
    def __init__(self, **_ignored):
        self.batches: list[list[str]] = []
        self.seeds: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seeds.append(torch.initial_seed())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append(image_fingerprints(batch[0]))

    def on_train_end(self, trainer, pl_module) -> None:
        folder = Path(trainer.default_root_dir) / "probe"
        folder.mkdir(exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "batches": self.batches,
                  "seeds": self.seeds, "weights": weights_checksums(pl_module)}  # fmt: skip
        (folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
