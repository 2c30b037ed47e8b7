"""What a checkpoint needs beyond weights and optimizers for a resumed run to continue exactly where it stopped.

* The global RNG states (torch CPU and CUDA, numpy, Python), restored when training starts again. Lightning's own
  ``_collect_rng_states`` is private and keeps numpy's state as an ndarray, which torch's default
  ``weights_only`` loading refuses, so these are kept as tensors and plain tuples.
* The end of a step (EMA update, image count, loss check) must come before any checkpoint of that step. Lightning
  calls callbacks' ``on_train_batch_end`` before the LightningModule's and puts checkpoint callbacks last, so the
  module does that work in :class:`StepEnd`, a callback it brings itself (``configure_callbacks``).
"""

from __future__ import annotations

import pytorch_lightning as pl

from genbench.training.rng import collect_rng_states, restore_rng_states  # noqa: F401 - resume's own, kept here


class StepEnd(pl.Callback):
    """Runs ``pl_module.end_step(batch)`` after each training batch, before any checkpoint callback."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        pl_module.end_step(batch)
