"""What a W&B dashboard needs beyond the scalars Lightning's WandbLogger already sends (losses, in-training FID).

:class:`WandbMediaCallback` logs the resolved config, every new fixed-noise grid of ``samples/`` as a
``wandb.Image``, and at the end the run record and ``metrics.json`` into the run summary, then finishes the W&B
run so that the next job of a sweep in the same process starts its own. ``train.py`` attaches it only when a
WandbLogger is among the trainer's loggers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl

from genbench.files import read_json

log = logging.getLogger(__name__)
RECORD_KEYS = ("status", "stop_reason", "params", "images_seen", "steps", "train_seconds", "img_per_s", "peak_mem_mb",
               "train_flops", "train_flops_per_image")  # fmt: skip
METRIC_KEYS = ("fid", "fid_inf", "kid_mean", "kid_std", "is_mean", "is_std", "is_inf", "precision", "recall", "density",
               "coverage", "memorization", "sample_seconds_per_1k", "n_fake", "n_real", "extractor", "protocol")  # fmt: skip


def find_wandb_logger(trainer: pl.Trainer):
    from pytorch_lightning.loggers import WandbLogger

    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class WandbMediaCallback(pl.Callback):
    def __init__(self, wandb_logger, run_dir: Path, config: dict):
        self.logger, self.samples = wandb_logger, Path(run_dir) / "samples"
        self.run_dir, self.config = Path(run_dir), config
        self.logged: set[str] = set()
        self.finished = False

    @classmethod
    def attach(cls, trainer: pl.Trainer, run_dir: Path, config: dict) -> "WandbMediaCallback | None":
        """Append the callback to ``trainer`` when it logs to W&B; None (and nothing changed) otherwise."""
        wandb_logger = find_wandb_logger(trainer)
        if wandb_logger is None:
            return None
        import wandb

        if wandb.run is not None:  # left open by an earlier job of this process (it failed after training)
            log.warning("finishing a W&B run left open by an earlier job (%s)", wandb.run.name)
            wandb.finish(exit_code=1)
        callback = cls(wandb_logger, run_dir, config)
        trainer.callbacks.append(callback)
        return callback

    @property
    def run(self):
        return self.logger.experiment

    def log_new_grids(self, step: int) -> None:
        import wandb

        if not self.samples.is_dir():
            return
        for path in sorted(self.samples.glob("step_*.png")):
            if path.name not in self.logged:
                self.logged.add(path.name)
                grid_step = int(path.stem.split("_")[-1])
                self.run.log({"samples": wandb.Image(str(path), caption=f"{self.config['model']['family']} step {grid_step}"),
                              "trainer/global_step": step})  # fmt: skip

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.run.config.update({"genbench": self.config}, allow_val_change=True)
            self.logged = {p.name for p in self.samples.glob("step_*.png")} if self.samples.is_dir() else set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            self.log_new_grids(trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.log_new_grids(trainer.global_step)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.is_global_zero and not self.finished:
            self.run.summary["run/status"] = "diverged" if type(exception).__name__ == "Diverged" else "failed"
            self.run.summary["run/stop_reason"] = f"{type(exception).__name__}: {exception}"
            self.finished = True
            self.run.finish(exit_code=1)

    def finish(self, record: dict) -> None:
        """The run record and the evaluation (``record['metrics']`` or metrics.json) into the summary; close the run."""
        if self.finished:
            return
        summary = self.run.summary
        for key in RECORD_KEYS:
            if record.get(key) is not None:
                summary[f"run/{key}"] = record[key]
        metrics = record.get("metrics")
        if metrics is None and (self.run_dir / "metrics.json").is_file():
            metrics = read_json(self.run_dir / "metrics.json", skip_bad=True, what="score")
        for key in METRIC_KEYS:
            if metrics and metrics.get(key) is not None:
                summary[f"eval/{key}"] = metrics[key]
        for other in record.get("other_metrics") or []:  # metrics.extractors: eval_<extractor>/<key> for the others
            for key in METRIC_KEYS:
                if other.get(key) is not None:
                    summary[f"eval_{other.get('extractor')}/{key}"] = other[key]
        self.finished = True
        self.run.finish()
