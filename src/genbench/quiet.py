"""Lightning's lines that say nothing about a genbench run, silenced where Lightning emits them.

:func:`quiet_lightning` runs inside every entry point's task (:func:`genbench.cli.hydra_entry`): Hydra's joblib and
submitit launchers run the task in other processes, which never execute the entry module's top-level code (the task
is pickled by value from ``__main__``), so filters set when a module is imported would not reach them.

Lightning speaks through two channels, each narrowed at its source:

- ``rank_zero_info`` logs at INFO through Lightning's rank-zero logger: the device inventory ("GPU available: False,
  used: False", "TPU available", "HPU available"), "Using bfloat16 Automatic Mixed Precision", the litlogger and
  litmodels tips, "Restoring states from the checkpoint". genbench says what matters of these itself (precision and
  devices in run.json's ``hardware``, "resuming from ..." in the log), so that logger (and the CUDA accelerator's,
  which logs the visible devices) is raised to WARNING.
- ``rank_zero_warn`` goes through Python's warnings. Three of them do not apply to genbench by design; each is
  ignored by its message and the module that raises it, so every other Lightning warning (a GPU left unused, a slow
  data loader, ...) still shows.
"""

from __future__ import annotations

import logging
import warnings

# The rank-zero logger under both of Lightning's package layouts (pytorch_lightning + lightning_fabric, lightning.*),
# and the CUDA accelerator's, whose one INFO line is more device inventory ("LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]").
_QUIET_LOGGERS = (
    *(f"{package}.utilities.rank_zero" for package in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch",
                                                       "lightning.fabric")),
    "pytorch_lightning.accelerators.cuda", "lightning.pytorch.accelerators.cuda",
)  # fmt: skip
_PL = r"(pytorch_lightning|lightning\.pytorch)"
# (message, module, category): message and module are regular expressions matched at the start of the warning's
# text and of the name of the module that warns (Python's warnings filters).
_IRRELEVANT_WARNINGS = (
    # Budgets stop runs, not epochs, and losses are logged by global step across epochs: a subset of fewer batches
    # than trainer.log_every_n_steps still logs every log_every_n_steps steps, and its final step (models/base.py).
    ("The number of training batches .* is smaller than the logging interval", _PL + r"\.loops\.fit_loop", Warning),
    # No family validates during training (in-training FID scores instead), on purpose.
    ("You passed in a `val_dataloader` but have no `validation_step`", _PL + r"\.trainer\.configuration_validator",
     Warning),
    # Lightning's own use of a torch API that torch deprecated: nothing a user can change.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", _PL + r"\.utilities\._pytree", FutureWarning),
)  # fmt: skip


def quiet_lightning() -> None:
    """Silence Lightning's irrelevant lines in this process (calling it again changes nothing)."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message, module, category in _IRRELEVANT_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
