"""Checkpoints a crash cannot spoil: written atomically, the previous one kept, saved every N batches or minutes.

* :class:`AtomicCheckpointIO` writes to a temporary file, syncs it to disk and renames it over the target, so
  ``last.ckpt`` is always a whole checkpoint; the checkpoint it replaces stays as ``previous.ckpt`` (a hard link,
  so at every instant both names hold a whole file).
* :class:`PeriodicCheckpoint` saves ``last.ckpt`` every ``every_n_steps`` training batches (a GAN's batch is one
  step, however many optimizers it steps) and every ``every_n_minutes``. Lightning's ModelCheckpoint counts
  optimizer steps and takes only one of the two intervals.
* :func:`readable_checkpoint` picks what a resumed run starts from: ``last.ckpt``, or ``previous.ckpt`` when
  ``last.ckpt`` cannot be read (or holds non-finite weights).

Every saved checkpoint holds finite weights: the model refuses to save otherwise (``on_save_checkpoint``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from genbench.errors import GenbenchError
from genbench.files import atomic_open, atomic_path
from genbench.training.budget import BudgetCallback
from genbench.training.finite import non_finite_tensors

log = logging.getLogger(__name__)
LAST, PREVIOUS = "last.ckpt", "previous.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The new checkpoint is written whole (genbench.files) before the old one moves to previous.ckpt, so a
        # failed write (a full disk) leaves both names as they were and no temporary file behind.
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)
            if path.name == LAST and path.exists():
                with atomic_path(path.with_name(PREVIOUS)) as link:
                    try:
                        os.link(path, link)
                    except OSError:  # a file system without hard links
                        shutil.copyfile(path, link)


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it can."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        return f"{type(exc).__name__}: {exc}"
    if not isinstance(checkpoint, dict) or not {"state_dict", "loops"} <= checkpoint.keys():
        return "not a training checkpoint (no state_dict and loops)"
    if bad := non_finite_tensors(checkpoint["state_dict"]):  # saved before genbench refused such checkpoints
        return f"{len(bad)} non-finite weight tensors, e.g. {bad[0]}"
    return None


def readable_checkpoint(checkpoints: Path) -> Path | None:
    """``last.ckpt``, or ``previous.ckpt`` (said in the log) when ``last.ckpt`` is missing or damaged; None when
    neither exists. Neither readable is a GenbenchError that leaves both files as they are."""
    last, previous = checkpoints / LAST, checkpoints / PREVIOUS
    if not last.exists() and not previous.exists():
        return None
    problems = {}
    for path in (last, previous):
        if path.exists():
            problem = _unreadable(path)
            if problem is None:
                if path == previous:
                    log.warning("%s cannot be read (%s); resuming from %s, the checkpoint before it",
                                last, problems.get(last, "missing"), previous.name)  # fmt: skip
                return path
            problems[path] = problem
    found = "; ".join(f"{p.name}: {why}" for p, why in problems.items())
    raise GenbenchError(f"no readable checkpoint to resume from in {checkpoints} ({found}); start a new run with "
                        "another name or seed, or delete that run folder")  # fmt: skip


class PeriodicCheckpoint(Checkpoint):
    """Saves ``dirpath/last.ckpt`` every ``every_n_steps`` batches and every ``every_n_minutes`` of training.

    A ``Checkpoint`` subclass, so Lightning runs it after every other callback's ``on_train_batch_end``: the saved
    step is complete (EMA updated, images counted).
    """

    def __init__(self, dirpath: Path, budget: BudgetCallback, every_n_steps: int | None = None,
                 every_n_minutes: float | None = None):  # fmt: skip
        self.path = Path(dirpath) / LAST
        self.budget, self.every_n_steps, self.every_n_minutes = budget, every_n_steps, every_n_minutes
        self._last_save = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        by_steps = bool(self.every_n_steps) and self.budget.steps % self.every_n_steps == 0
        by_time = bool(self.every_n_minutes) and time.monotonic() - self._last_save >= 60 * self.every_n_minutes
        by_time = trainer.strategy.broadcast(by_time)  # every rank saves together, or none does
        if by_steps or by_time:
            trainer.save_checkpoint(self.path, weights_only=False)
            self._last_save = time.monotonic()
