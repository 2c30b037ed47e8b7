"""What a checkpoint needs beyond weights and optimizers for a resumed run to continue exactly where it stopped.

* The global RNG states (torch CPU and CUDA, numpy, Python), restored when training starts again. Lightning's own
  ``_collect_rng_states`` is private and keeps numpy's state as an ndarray, which torch's default
  ``weights_only`` loading refuses, so these are kept as tensors and plain tuples.
* The end of a step (EMA update, image count, loss check) must come before any checkpoint of that step. Lightning
  calls callbacks' ``on_train_batch_end`` before the LightningModule's and puts checkpoint callbacks last, so the
  module does that work in :class:`StepEnd`, a callback it brings itself (``configure_callbacks``).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


def collect_rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": (version, list(state), gauss),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["torch.cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


class StepEnd(pl.Callback):
    """Runs ``pl_module.end_step(batch)`` after each training batch, before any checkpoint callback."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        pl_module.end_step(batch)
