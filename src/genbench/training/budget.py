"""Fair budgets: a run stops after a number of training batches, images seen, minutes, or training FLOPs.

Lightning's ``max_steps`` counts optimizer steps (two or more per batch for a GAN) and ``max_time``
knows nothing of images, so one callback counts all four the same way for every family and
carries its counters through checkpoints, so a resumed run continues its budget.

A FLOP budget is machine-independent: each batch adds its images times the FLOPs per image of the phase it trains
in, counted once from the config (genbench.training.flops), so the same config stops at the same step on any machine
under any load. A latent model's autoencoder stage and its denoiser cost differently per image; the sum follows
them batch by batch.

Under DDP the counts are global: a step is one optimizer update (the same on every rank) and its images are the
global batch, every rank's share. Every rank stops at the same step: steps and images are equal on all ranks, and a
time budget is decided on rank 0's clock and broadcast (ranks that stopped apart would wait on each other forever).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytorch_lightning as pl

from genbench.errors import GenbenchError
from genbench.schema.types import parse_flops
from genbench.training.flops import TrainFlops


@dataclass
class Budget:
    max_steps: int | None = None
    max_images: int | None = None
    max_minutes: float | None = None
    max_flops: float | str | None = None  # 2e13, or "20T" (suffixes K, M, G, T, P)

    def __post_init__(self) -> None:
        set_keys = [k for k, v in self.__dict__.items() if v is not None]
        if len(set_keys) != 1:
            raise GenbenchError(f"exactly one of budget.max_steps, budget.max_images, budget.max_minutes, "
                                f"budget.max_flops must be set; got {set_keys or 'none'}")  # fmt: skip
        if self.max_flops is not None:
            try:
                self.max_flops = parse_flops(self.max_flops)
            except ValueError as exc:
                raise GenbenchError(f"budget.max_flops={self.max_flops}: {exc}") from None
        value = getattr(self, set_keys[0])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise GenbenchError(f"budget.{set_keys[0]}={value}; expected a positive number")

    @property
    def kind(self) -> str:
        return next(k for k, v in self.__dict__.items() if v is not None)


class BudgetCallback(pl.Callback):
    """``flops``: the model's training FLOPs per image (genbench.training.flops), which a FLOP budget needs; without
    them the run's FLOPs are unknown (None) and a FLOP budget is never spent."""

    def __init__(self, budget: Budget, flops: TrainFlops | None = None):
        self.budget = budget
        self.counter = flops
        self.steps = 0
        self.images = 0
        self.flops: int | None = 0 if flops is not None else None  # training FLOPs spent so far
        self.phase_images: dict[str, int] = dict.fromkeys(flops.per_image, 0) if flops is not None else {}
        self.train_seconds = 0.0
        self.stop_reason: str | None = None
        self._session_start: float | None = None
        self._seconds_before = 0.0
        self._excluded = 0.0
        self.session_images = 0

    def exhausted(self) -> bool:
        b = self.budget
        return (
            (b.max_steps is not None and self.steps >= b.max_steps)
            or (b.max_images is not None and self.images >= b.max_images)
            or (b.max_minutes is not None and self.train_seconds >= 60 * b.max_minutes)
            or (b.max_flops is not None and self.flops is not None and self.flops >= b.max_flops)
        )

    def _tick(self) -> None:
        if self._session_start is not None:
            elapsed = time.perf_counter() - self._session_start - self._excluded
            self.train_seconds = self._seconds_before + elapsed

    @contextmanager
    def paused(self):
        """Monitoring (sample grids, in-training FID) does not spend the training budget.

        Sampling costs differ wildly between families (one generator pass against tens of UNet passes),
        so counting it would charge a model that takes a sampler for being watched.
        """
        start = time.perf_counter()
        try:
            yield
        finally:
            self._excluded += time.perf_counter() - start

    def on_train_start(self, trainer, pl_module) -> None:
        if self.flops is None and self.counter is not None:  # resumed from a checkpoint saved before FLOPs were counted
            self.flops, self.phase_images = self.counter.spent(self.steps, self.images)
        self._seconds_before = self.train_seconds
        self._session_start = time.perf_counter()
        self._excluded = 0.0
        if self.exhausted():  # resumed a run that had already spent its budget
            self.stop_reason = f"budget.{self.budget.kind}"
            trainer.should_stop = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.stop_reason is not None:  # decided alike on every rank (not each rank's own clock)
            return -1  # Lightning: skip the rest of this epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        images = int(batch[0].shape[0]) * trainer.world_size  # every rank trains an equal share of the global batch
        if self.counter is not None:  # in the phase this batch trained in: decided by the images before it
            phase = self.counter.phase(self.images)
            self.flops += images * self.counter.per_image[phase]
            self.phase_images[phase] = self.phase_images.get(phase, 0) + images
        self.steps += 1
        self.images += images
        self.session_images += images
        self._tick()
        done = self.exhausted()
        if self.budget.max_minutes is not None and trainer.world_size > 1:
            done = trainer.strategy.broadcast(done, src=0)
        if done:
            self.stop_reason = f"budget.{self.budget.kind}"
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._tick()

    def session_seconds(self) -> float:
        return self.train_seconds - self._seconds_before

    def flops_record(self) -> dict:
        """run.json's FLOP fields: ``train_flops`` (what the images seen cost), ``train_flops_per_image`` (that over
        the images seen; before any, the first batch's cost) and, per phase, its FLOPs per image and images."""
        if self.counter is None or self.flops is None:
            return {"train_flops_per_image": None, "train_flops": None}
        first = self.counter.per_image[self.counter.phase(0)]
        return {
            "train_flops_per_image": round(self.flops / self.images) if self.images else first,
            "train_flops": self.flops,
            "train_flops_phases": {name: {"flops_per_image": per_image, "images": self.phase_images.get(name, 0)}
                                   for name, per_image in self.counter.per_image.items()},
        }  # fmt: skip

    def state_dict(self) -> dict:
        self._tick()
        return {"steps": self.steps, "images": self.images, "train_seconds": self.train_seconds, "flops": self.flops,
                "phase_images": dict(self.phase_images)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.images, self.train_seconds = state["steps"], state["images"], state["train_seconds"]
        # absent from checkpoints saved before FLOPs were counted: worked out from the counts when training starts
        self.flops = state.get("flops")
        self.phase_images = dict(state.get("phase_images") or {})
