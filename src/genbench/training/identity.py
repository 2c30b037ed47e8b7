"""Run identity: a run folder belongs to one training config, and this module says which keys make that config.

A command may skip or continue the run in a folder only when every key that shapes training equals the folder's
``config.yaml``; otherwise it stops with an error naming the keys that differ and leaves the folder as it was.
A key shapes training unless it is listed below, so a setting added later is never silently mixed into an old run.

Keys that do **not** shape training:

- ``budget.*``: how long to train. A larger budget continues a run; an equal or smaller one leaves a completed run
  alone.
- What only starts, watches, keeps or scores a run: ``resume``, ``evaluate``, ``name``, ``paths.*``, ``logger.*``,
  ``callbacks.*`` (sample grids, in-training FID, the progress bar), ``sampler.*`` (in-training grids and the
  evaluation; training never samples), ``metrics.*``.
- How often training is logged and saved, and the validation and test settings (genbench has no validation step;
  the test split is scored after training): ``trainer.log_every_n_steps``, ``trainer.checkpoint_every_n_steps``,
  ``trainer.checkpoint_every_n_minutes``, ``trainer.enable_model_summary``, ``trainer.num_sanity_val_steps``,
  ``trainer.limit_val_batches``, ``trainer.limit_test_batches``.
- Where and how the data is read: ``data.cache_dir``, ``data.num_workers``, ``data.on_device`` (both loader paths
  walk the same batches), and ``data.root`` for ``data.source=fashion_mnist``, where it only says where the standard
  files lie (for an image folder the root *is* the data, so there it counts).
- Which machine and how fast: ``hardware.name``, ``hardware.accelerator`` and the speed switches
  ``hardware.compile``, ``hardware.channels_last``, ``hardware.fused_optimizer`` (they change floating-point
  rounding, not what is computed; ``model.compile`` is where older runs kept ``hardware.compile``).
- When a run counts as diverged: ``model.loss_limit`` (the GAN's bound on its loss terms) stops a run, it does not
  change what the run computes before that.

Everything else shapes training: ``seed``, ``model.*`` (architecture, loss, optimizers, EMA, ...), ``data.*``
(source, name, image size, channels, resize, subset, val_size, batch_size, flip, seed), the trainer's numerics
(``trainer.gradient_clip_val``, ``trainer.deterministic``, any other Trainer argument), ``hardware.precision`` (as resolved:
``auto`` is replaced by this machine's choice before the folder is checked or written),
``hardware.devices``, ``hardware.num_nodes`` and ``hardware.strategy``. ``data.batch_size`` is the global batch
(the images an update sees, summed over all ranks), so the number of ranks does not change which images an update
sees; it still counts, conservatively: floating-point reduction order and each rank's own noise draws differ. A run
folder written before ``hardware.num_nodes`` existed ran on one node (``IMPLIED``).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from genbench.errors import GenbenchError

CONFIG_YAML = "config.yaml"
NOT_TRAINING_GROUPS = ("budget", "resume", "evaluate", "name", "paths", "logger", "callbacks", "sampler", "metrics",
                       "hydra")  # fmt: skip
NOT_TRAINING_KEYS = frozenset({
    "trainer.log_every_n_steps", "trainer.checkpoint_every_n_steps", "trainer.checkpoint_every_n_minutes",
    "trainer.enable_model_summary", "trainer.num_sanity_val_steps", "trainer.limit_val_batches",
    "trainer.limit_test_batches",
    "data.cache_dir", "data.num_workers", "data.on_device",
    "hardware.name", "hardware.accelerator", "hardware.compile", "hardware.channels_last", "hardware.fused_optimizer",
    "model.compile", "model.loss_limit",
})  # fmt: skip
ABSENT = "(absent)"
IMPLIED = {"hardware.num_nodes": 1}  # the value a key added later had before it existed
MAX_LISTED = 8


def shapes_training(key: str, config: dict) -> bool:
    """Whether the dotted ``key`` of a train config decides the weights a run ends with (see the module docstring)."""
    if key.split(".", 1)[0] in NOT_TRAINING_GROUPS or key in NOT_TRAINING_KEYS:
        return False
    if key == "data.root":
        return (config.get("data") or {}).get("source") != "fashion_mnist"
    return True


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """Dotted keys to leaf values; lists stay whole (``model.net.channel_mults`` is one setting)."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def training_differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old value, new value) for every key that shapes training and differs; ``ABSENT`` where one lacks it."""
    flat_old, flat_new = IMPLIED | flatten(old), IMPLIED | flatten(new)
    diffs = []
    for key in sorted(flat_old.keys() | flat_new.keys()):
        before, after = flat_old.get(key, ABSENT), flat_new.get(key, ABSENT)
        if before != after and (shapes_training(key, old) or shapes_training(key, new)):
            diffs.append((key, before, after))
    return diffs


def _show(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def read_run_config(run_dir: Path) -> dict | None:
    """The training config a run folder holds (its ``config.yaml``), or None for a folder without one."""
    path = Path(run_dir) / CONFIG_YAML
    if not path.is_file():
        return None
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # noqa: BLE001 - any damage means the run's config cannot be known
        raise GenbenchError(f"{path} cannot be read ({type(exc).__name__}), so the run in {run_dir} cannot be "
                            f"matched to this command; restore the file or remove the folder") from exc  # fmt: skip
    if not isinstance(config, dict):
        raise GenbenchError(f"{path} holds no config mapping; restore the file or remove the folder {run_dir}")
    return config


def _listed(diffs: list[tuple[str, object, object]]) -> str:
    listed = ", ".join(f"{key} {_show(before)} -> {_show(after)}" for key, before, after in diffs[:MAX_LISTED])
    return listed + (f" and {len(diffs) - MAX_LISTED} more" if len(diffs) > MAX_LISTED else "")


def check_same_training(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse to touch ``run_dir`` when its run was trained under another config than ``cfg``."""
    old = read_run_config(run_dir)
    if old is None:
        return
    diffs = training_differences(old, OmegaConf.to_container(cfg, resolve=True))
    if not diffs:
        return
    raise GenbenchError(
        f"{run_dir} holds a run trained under another config ({_listed(diffs)}); a run folder holds one training "
        f"config (only budget.* may grow, and settings that do not shape training may change). Start a new run "
        f"with another name= or seed=, or remove {run_dir}"
    )


def checkpoint_config(path: Path) -> dict | None:
    """The training config a genbench checkpoint was written under (None: not a genbench checkpoint). Memory-mapped,
    so reading it costs little beside the load that follows."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise GenbenchError(f"{path} is not a readable checkpoint: {type(exc).__name__}: {exc}") from exc
    meta = checkpoint.get("genbench") if isinstance(checkpoint, dict) else None
    return meta.get("config") if isinstance(meta, dict) and isinstance(meta.get("config"), dict) else None


def check_checkpoint_belongs(ckpt: Path, ckpt_config: dict | None, run_dir: Path, expected: dict | None = None) -> None:
    """Refuse a checkpoint that another run wrote, before anything of ``run_dir`` is read into a score or rewritten.

    ``expected``: the training config it must match (a resumed command's); by default the folder's ``config.yaml``.
    The family in the folder's run.json must match too. A folder with neither (a checkpoint kept on its own) passes.
    """
    expected = read_run_config(run_dir) if expected is None else expected
    if expected is not None and ckpt_config is None:
        raise GenbenchError(f"{ckpt} is not a genbench checkpoint (no training config inside), so it cannot belong "
                            f"to the run in {run_dir}")  # fmt: skip
    family = ((ckpt_config or {}).get("model") or {}).get("family")
    record = Path(run_dir) / "run.json"
    try:
        recorded = json.loads(record.read_text()).get("family") if record.is_file() else None
    except (OSError, ValueError, AttributeError):
        recorded = None  # an unreadable record says nothing here; config.yaml still does
    problem = None
    if recorded is not None and family != recorded:  # said alone: every model key would differ too
        problem = f"a {family} checkpoint, but {record} is a {recorded} run"
    elif expected is not None and (diffs := training_differences(expected, ckpt_config)):
        problem = f"trained under another config than {run_dir / CONFIG_YAML} ({_listed(diffs)})"
    if problem:
        raise GenbenchError(f"{ckpt} does not belong to the run in {run_dir}: {problem}. Nothing was changed; give "
                            "the checkpoint a run folder of its own")  # fmt: skip
