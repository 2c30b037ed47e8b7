"""Callbacks every run gets: the run record, the fixed-noise sample grid and a budget-aware progress bar."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.callbacks.progress.rich_progress import BatchesProcessedColumn, ProcessingSpeedColumn
from rich.text import Text

from genbench.imageio import make_grid, provenance_chunks, save_png, to_uint8
from genbench.sampling import sampler_settings
from genbench.noise import IndexedNoise
from genbench.schema.types import PositiveInt
from genbench.training.budget import BudgetCallback
from genbench.training.flops import si_flops
from genbench.training.record import (RUN_JSON, hardware_info, now, peak_memory_mb, read_json, speed_info, weights_sha256,
                                      write_json)  # fmt: skip


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
            **self.budget.flops_record(),  # train_flops_per_image, train_flops (genbench.training.flops)
            **fields,
        )
        stages = pl_module.stage_record()  # a latent model's autoencoder stage: its images, parameters and scale
        if stages:
            self.record["stages"] = stages
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
        return self.update(trainer, pl_module, status=status, stop_reason=stop_reason, finished=now(),
                           weights_sha256=weights_sha256(pl_module), **fields)  # fmt: skip


class SampleGridCallback(pl.Callback):
    """A grid from the same noise every ``every_n_steps`` batches and at the end: samples/step_NNNNNN.png.

    Cell i always has the noise stream of ``(seed, i)`` (:class:`genbench.noise.IndexedNoise`), so grids of one
    run show the same draws as training goes, and match ``genbench.sample`` with the same seed and labels.
    """

    def __init__(self, every_n_steps: PositiveInt | None = 250, n: PositiveInt = 64, *, run_dir: Path, run_seed: int,
                 budget: BudgetCallback, sampler: dict | None) -> None:  # fmt: skip
        self.dir = Path(run_dir) / "samples"
        self.every, self.n, self.seed, self.budget, self.sampler = every_n_steps, n, run_seed, budget, sampler
        self.settings: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        # The model says which sampler settings apply (none for one-pass families); asked before any training.
        self.settings = sampler_settings(pl_module, self.sampler)

    def save(self, pl_module) -> Path:
        labels, n = None, self.n
        if pl_module.num_classes:  # one column per class, whole rows only
            n = -(-self.n // pl_module.num_classes) * pl_module.num_classes
            labels = torch.arange(n) % pl_module.num_classes
        if self.settings is None and self.sampler:
            self.settings = sampler_settings(pl_module, self.sampler)
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


class _SpentColumn(BatchesProcessedColumn):
    """The training bar's count in the budget's unit ("300/300 batches", "1.5/2 min"); other bars' as Lightning's."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit")
        if unit is None:
            return super().render(task)
        if unit == "FLOPs":
            return Text(f"{si_flops(task.completed)}/{si_flops(task.total)} FLOPs", style=self.style)
        if unit == "min":  # as many decimals as the budget has (at least one): 1.5/2 min, 0.01/0.01 min
            decimals = max(1, len(f"{task.total:g}".partition(".")[2]))
            return Text(f"{task.completed:.{decimals}f}/{task.total:g} min", style=self.style)
        return Text(f"{int(task.completed):,}/{int(task.total):,} {unit}", style=self.style)


class _SpeedColumn(ProcessingSpeedColumn):
    """Batches or images per second for the training bar (a time budget's speed would be minutes per second)."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit")
        if unit is None:
            return super().render(task)
        if unit in ("min", "FLOPs") or task.speed is None:
            return Text("")
        return Text(f"{task.speed:,.1f} {'img' if unit == 'images' else 'it'}/s", style=self.style)


def budget_spent(budget: BudgetCallback) -> tuple[float, float, str]:
    """(spent, total, unit) of the budget: batches, images, minutes of training time, or training FLOPs."""
    b = budget.budget
    if b.max_flops is not None:
        return budget.flops or 0, b.max_flops, "FLOPs"
    if b.max_steps is not None:
        return budget.steps, b.max_steps, "batches"
    if b.max_images is not None:
        return budget.images, b.max_images, "images"
    return budget.train_seconds / 60, b.max_minutes, "min"


class BudgetProgressBar(RichProgressBar):
    """Lightning's rich progress bar with one training bar for the whole run, counted in the budget's own unit.

    Runs train with ``max_epochs=-1`` because budgets stop them, so the stock bar (the current epoch's batches,
    "Epoch 3/-2") ends wherever in an epoch the budget ran out: a finished run read "4/8". Here the training bar's
    total is the budget (batches, images or minutes) and its count what :class:`BudgetCallback` has spent, carried
    across a resume, set once more when training ends: a finished run reads "300/300 batches" on a full bar.
    Lightning has no public hook for the training bar; it is built in ``_initialize_train_progress_bar_id`` and
    reset each epoch in ``on_train_epoch_start``, which are overridden here. Other bars (the VAE's test split) are
    Lightning's.
    """

    def _budget(self) -> BudgetCallback | None:
        return next((cb for cb in self.trainer.callbacks if isinstance(cb, BudgetCallback)), None)

    def configure_columns(self, trainer) -> list:
        replace = {BatchesProcessedColumn: _SpentColumn, ProcessingSpeedColumn: _SpeedColumn}
        return [replace[type(c)](c.style) if type(c) in replace else c for c in super().configure_columns(trainer)]

    def _initialize_train_progress_bar_id(self) -> None:
        budget = self._budget()
        if budget is None:
            return super()._initialize_train_progress_bar_id()
        spent, total, unit = budget_spent(budget)
        description = self._get_train_description(self.trainer.current_epoch)
        self.train_progress_bar_id = self.progress.add_task(
            f"[{self.theme.description}]{description}" if self.theme.description else description,
            total=total, completed=spent, unit=unit,
        )  # fmt: skip

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._budget() is None:
            return super().on_train_epoch_start(trainer, pl_module)
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:  # one bar for the run: later epochs only rename it
            self._initialize_train_progress_bar_id()
        else:
            description = self._get_train_description(trainer.current_epoch)
            if self.theme.description:
                description = f"[{self.theme.description}]{description}"
            self.progress.update(self.train_progress_bar_id, description=description)
        self.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        budget = self._budget()
        if budget is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:  # resumed mid-epoch
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, budget_spent(budget)[0])
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def on_train_end(self, trainer, pl_module) -> None:
        # The final count (a time budget's last tick included), drawn now: the refresh thread draws at its own
        # rate, and the bar stops before the VAE's test bar starts.
        if (budget := self._budget()) is not None:
            self._update(self.train_progress_bar_id, budget_spent(budget)[0], hard=True)

    def _get_train_description(self, current_epoch: int) -> str:
        if self._budget() is None:
            return super()._get_train_description(current_epoch)
        return f"Epoch {current_epoch}"


def instantiate_callbacks(nodes, **context) -> list[pl.Callback]:
    """The callbacks of ``callbacks.*`` (``_target_`` nodes, as lightning-hydra-template's ``instantiate_callbacks``),
    each given what it asks for of the run's ``context`` (its run folder, seed, budget, sampler, metrics) by the
    name of a keyword argument; a node set to null is left out."""
    from hydra.utils import get_object, instantiate

    built = []
    for node in nodes.values():
        if node is None:
            continue
        wanted = inspect.signature(get_object(node._target_)).parameters
        built.append(instantiate(node, **{k: v for k, v in context.items() if k in wanted}))
    return built

