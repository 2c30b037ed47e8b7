"""Callbacks every run gets: the run record, the fixed-noise sample grid and a budget-aware progress bar."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar

from genbench.imageio import make_grid, provenance_chunks, save_png, to_uint8
from genbench.noise import IndexedNoise
from genbench.training.budget import BudgetCallback
from genbench.training.record import RUN_JSON, hardware_info, now, peak_memory_mb, read_json, speed_info, write_json


class RunRecordCallback(pl.Callback):
    """Writes run.json when training starts and again when it ends, whatever the ending.

    A session that fails before training starts (a checkpoint that does not load, say) leaves an existing record
    as it was: it trained nothing, so a completed run stays completed.
    """

    def __init__(self, run_dir: Path, seed: int, budget: BudgetCallback, base: dict):
        self.path = Path(run_dir) / RUN_JSON
        self.seed, self.budget, self.record = seed, budget, dict(base)
        self.session_started = False

    def update(self, trainer, pl_module, **fields) -> dict:
        seconds = self.budget.session_seconds()
        self.record.update(
            family=pl_module.family,
            seed=self.seed,
            params=sum(p.numel() for n, p in pl_module.named_parameters() if not n.startswith("ema.")),
            images_seen=self.budget.images,
            steps=self.budget.steps,
            train_seconds=round(self.budget.train_seconds, 2),
            img_per_s=round(self.budget.session_images / seconds, 2) if seconds > 0 else None,
            peak_mem_mb=round(peak_memory_mb(trainer.strategy.root_device), 1),
            hardware=hardware_info(trainer),
            speed=speed_info(trainer, pl_module),
            **fields,
        )
        if trainer.is_global_zero:
            write_json(self.path, self.record)
        return self.record

    def on_train_start(self, trainer, pl_module) -> None:
        self.session_started = True
        self.record.setdefault("started", now())
        self.update(trainer, pl_module, status="running", stop_reason=None, finished=None)

    def finish(self, trainer, pl_module, status: str, stop_reason: str | None, **fields) -> dict:
        if not self.session_started and self.path.exists():
            return read_json(self.path, what="run record")
        return self.update(trainer, pl_module, status=status, stop_reason=stop_reason, finished=now(), **fields)


class SampleGridCallback(pl.Callback):
    """A grid from the same noise every ``every_n_steps`` batches and at the end: samples/step_NNNNNN.png.

    Cell i always has the noise stream of ``(seed, i)`` (:class:`genbench.noise.IndexedNoise`), so grids of one
    run show the same draws as training goes, and match ``genbench.sample`` with the same seed and labels.
    """

    def __init__(self, run_dir: Path, every_n_steps: int, n: int, seed: int, budget: BudgetCallback, sampler: dict):
        self.dir = Path(run_dir) / "samples"
        self.every, self.n, self.seed, self.budget, self.sampler = every_n_steps, n, seed, budget, sampler
        self.settings: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        # The model says which sampler settings apply (none for one-pass families); asked before any training.
        self.settings = pl_module.sampler_settings(self.sampler)

    def save(self, pl_module) -> Path:
        labels, n = None, self.n
        if pl_module.num_classes:  # one column per class, whole rows only
            n = -(-self.n // pl_module.num_classes) * pl_module.num_classes
            labels = torch.arange(n) % pl_module.num_classes
        if self.settings is None and self.sampler:
            self.settings = pl_module.sampler_settings(self.sampler)
        was_training = pl_module.training
        pl_module.eval()
        noise = IndexedNoise.range(self.seed, 0, n, pl_module.device)
        images = pl_module.sample(n, labels=labels, generator=noise, **(self.settings or {}))
        pl_module.train(was_training)
        nrow = pl_module.num_classes or 8
        path = self.dir / f"step_{self.budget.steps:06d}.png"
        chunks = provenance_chunks(pl_module.family, f"unsaved (training step {self.budget.steps})", self.seed)
        save_png(path, make_grid(to_uint8(images), nrow=nrow), chunks)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every and self.budget.steps % self.every == 0 and trainer.is_global_zero:
            with self.budget.paused():
                self.save(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            with self.budget.paused():
                self.save(pl_module)


class BudgetProgressBar(RichProgressBar):
    """Lightning's rich progress bar, its epoch line telling how much of the budget is spent.

    Runs train with ``max_epochs=-1`` because budgets stop them, so the stock line reads "Epoch 3/-2".
    Lightning has no public hook for that line; ``_get_train_description`` is where the rich bar builds it, once
    per epoch, so the line is also redrawn after every batch (else the last epoch's start is what stays on screen).
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # At the bar's own refresh rate, and on the batch that spends the budget: a redraw per batch costs a GAN
        # step's worth of time every few dozen batches on a CPU.
        due = (batch_idx + 1) % max(self.refresh_rate, 1) == 0 or trainer.should_stop
        if due and self.is_enabled and self.progress is not None and self.train_progress_bar_id is not None:
            description = self._get_train_description(trainer.current_epoch)
            if self.theme.description:
                description = f"[{self.theme.description}]{description}"
            self.progress.update(self.train_progress_bar_id, description=description)
            if trainer.should_stop:
                self.refresh()

    def _get_train_description(self, current_epoch: int) -> str:
        budget = next((cb for cb in self.trainer.callbacks if isinstance(cb, BudgetCallback)), None)
        if budget is None:
            return super()._get_train_description(current_epoch)
        b = budget.budget
        if b.max_steps is not None:
            spent = f"{budget.steps:,}/{b.max_steps:,} batches"
        elif b.max_images is not None:
            spent = f"{budget.images:,}/{b.max_images:,} images"
        else:
            spent = f"{budget.train_seconds / 60:.1f}/{b.max_minutes:g} min"
        return f"Epoch {current_epoch} · budget {spent}"
