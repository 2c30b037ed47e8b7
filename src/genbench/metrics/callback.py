"""FID during training, for FID-against-compute curves.

Every ``every_n_steps`` training batches and/or every ``every_n_minutes`` of training, and once at the end, the
callback samples ``n_samples`` images from ``pl_module.sample`` (the same per-image noise each time, balanced labels
for conditional models, the sampler settings the model says apply), scores them against the cached reference
features of ``trainer.datamodule`` with the one evaluator's extractor, and logs ``fid``, ``wall_clock_s`` (training
seconds, FID time excluded), ``images_seen``, ``train_flops`` (from the budget callback) and ``fid_seconds`` to every logger (metrics.csv with the CSV logger).

When the trainer has a budget callback (one with ``paused()`` and ``train_seconds``, as genbench's
``BudgetCallback``), FID time is paused out of the training budget and ``wall_clock_s`` is its ``train_seconds``,
so the curve's time axis matches run.json across resumes.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext

import pytorch_lightning as pl
import torch

from genbench.errors import GenbenchError
from genbench.metrics.cache import FeatureCache
from genbench.sampling import as_sampler_kwargs
from genbench.metrics.evaluator import (
    MetricsConfig,
    images_from_datamodule,
    model_sampler,
    reference_features,
    sample_images,
)
from genbench.metrics.extractors import Extractor, build_extractor
from genbench.metrics.fidelity import fid
from genbench.models.base import GenerativeModule
from genbench.schema.types import Flag, PositiveFloat, PositiveInt, Seed

log = logging.getLogger(__name__)


class FIDCallback(pl.Callback):
    """Log FID against the data module's reference split while training, every ``every_n_steps`` batches and/or
    ``every_n_minutes`` (neither: off, the default of conf/callbacks, so one config node serves both cases).

    ``metrics_cfg`` is the ``metrics`` config (extractor, reference split, cache); ``sampler_kwargs`` the sampler
    options (``cfg.sampler``, or ``sample``'s keywords), of which the model's ``sampler_settings`` keeps what applies.
    """

    def __init__(
        self,
        every_n_steps: PositiveInt | None = None,
        every_n_minutes: PositiveFloat | None = None,
        n_samples: PositiveInt = 500,
        metrics_cfg=None,
        sampler_kwargs=None,
        seed: Seed = 0,
        at_end: Flag = True,
    ):
        self.active = bool(every_n_steps or every_n_minutes)
        self.every_n_steps, self.every_n_minutes, self.n_samples = every_n_steps, every_n_minutes, int(n_samples)
        self.config = MetricsConfig.from_cfg(metrics_cfg)
        self.sampler = as_sampler_kwargs(sampler_kwargs)
        self.settings: dict | None = None  # what applies to the model, known once it is
        self.seed, self.at_end = seed, at_end
        self.extractor: Extractor | None = None
        self.reference: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []
        self._started = 0.0
        self._fid_seconds = 0.0
        self._last_eval_time = 0.0
        self._last_step = -1

    def _wall_clock(self, trainer) -> float:
        """Training seconds so far, FID time excluded: the budget's clock when there is one, else our own."""
        budget = self._budget(trainer)
        if budget is not None:
            return budget.train_seconds
        return time.perf_counter() - self._started - self._fid_seconds

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.active:
            return
        self._started = time.perf_counter()
        self._fid_seconds = 0.0
        self._last_eval_time = self._wall_clock(trainer)  # a resumed run waits a full period too

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Asked at fit start, so settings that do not apply to this model fail before any training.
        if not self.active:
            return
        self.settings = model_sampler(pl_module, self.sampler)

    def _prepare(self, trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        if datamodule is None:
            raise GenbenchError("FIDCallback needs the trainer's data module (trainer.fit(model, datamodule=...))")
        reference = images_from_datamodule(datamodule, self.config.reference_split, self.config.n_reference)
        self.extractor = build_extractor(
            self.config.extractor, reference.channels, pl_module.device, self.config.inception_weights,
            self.config.extractor_weights,
        )
        cache = FeatureCache(self.config.cache_dir)
        self.reference = reference_features(self.extractor, reference, cache, self.config, None, "reference")

    def _batches(self, trainer) -> int:
        """Training batches so far: the budget's count when there is one (a GAN makes two optimizer steps per
        batch, so Lightning's global_step would put its FID points twice as close as the other families')."""
        budget = self._budget(trainer)
        return budget.steps if budget is not None else trainer.global_step

    def _due(self, trainer) -> bool:
        step = self._batches(trainer)
        if step == self._last_step:
            return False
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            return True
        return bool(self.every_n_minutes) and self._wall_clock(trainer) - self._last_eval_time >= 60 * self.every_n_minutes

    @staticmethod
    def _budget(trainer):
        return next((cb for cb in trainer.callbacks if hasattr(cb, "paused") and hasattr(cb, "train_seconds")), None)

    @torch.no_grad()
    def measure(self, trainer, pl_module) -> dict:
        started = time.perf_counter()
        budget = self._budget(trainer)
        wall_clock = self._wall_clock(trainer)
        with budget.paused() if budget is not None else nullcontext():
            if self.extractor is None:
                self._prepare(trainer, pl_module)
            if isinstance(pl_module, GenerativeModule):  # NaN weights fail sampling's own check; said as what it is
                pl_module.raise_if_diverged()
            was_training = pl_module.training
            pl_module.eval()
            try:
                fake, _ = sample_images(
                    pl_module, self.n_samples, self.config.sampling_batch(self.settings), self.seed, self.settings,
                    pl_module.device, compile=self.config.compile_sampling(self.n_samples),
                )
            finally:
                pl_module.train(was_training)
            features = self.extractor.features(fake)
            value = fid(features, self.reference, self.extractor.feature_layer)
        self._fid_seconds += time.perf_counter() - started
        self._last_eval_time = wall_clock
        self._last_step = self._batches(trainer)
        metrics = {
            "fid": value,
            "wall_clock_s": wall_clock,
            "images_seen": float(getattr(pl_module, "images_seen", 0)),
            "fid_seconds": time.perf_counter() - started,
        }
        if getattr(budget, "flops", None) is not None:  # the training FLOPs so far, for FID against FLOPs
            metrics["train_flops"] = float(budget.flops)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.history.append({"step": self._last_step, **metrics})
        log.info("batch %d: fid %.3f (%s, %d samples)", self._last_step, value, self.extractor.name, self.n_samples)
        return metrics

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Measured before the next batch rather than after the last: Lightning runs callbacks' on_train_batch_end
        # before the module's, so images_seen would lag one batch there.
        if self.active and trainer.is_global_zero and self._due(trainer):
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.active and self.at_end and trainer.is_global_zero and self._batches(trainer) != self._last_step:
            self.measure(trainer, pl_module)
