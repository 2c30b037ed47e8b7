"""The runs' own records, copied into a report's folder so that the folder alone can be reproduced.

``OUT/runs/<run folder name>/`` receives each run's resolved ``config.yaml``, its ``run.json`` and every score it
was given (``metrics/<protocol>.json``): what :mod:`genbench.reproduce` retrains and rescores from. What says where
a run lived on the machine that made it (the ``paths`` group, cache folders, the run folder and checkpoint paths)
is left out: it is the reproducing machine's business, and committed results must not carry one machine's
folders. Nothing else changes, so a copied score still carries its protocol id, its settings and its values.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from genbench.files import atomic_folder, write_json, write_text
from genbench.report.collect import Run

RECORDS = "runs"  # the folder under a report's out=
#: config keys that say where a run lived, not what it trained or how it was scored
MACHINE_KEYS = ("paths", "data.cache_dir", "metrics.cache_dir", "hydra")
#: run.json and score fields that name the machine's folders
MACHINE_FIELDS = ("run_dir", "ckpt", "samples")


def portable_config(config: dict) -> dict:
    """``config`` without :data:`MACHINE_KEYS`."""
    config = OmegaConf.to_container(OmegaConf.create(config))
    for key in MACHINE_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = config
        for part in parent.split(".") if parent else []:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config


def portable_record(record: dict) -> dict:
    """A run.json or score without :data:`MACHINE_FIELDS` (and a score's metrics config without its cache folder)."""
    out = {k: v for k, v in record.items() if k not in MACHINE_FIELDS}
    if isinstance(out.get("metrics_config"), dict):
        out["metrics_config"] = {k: v for k, v in out["metrics_config"].items() if k != "cache_dir"}
    return out


def copy_records(runs: list[Run], out: Path) -> list[Path]:
    """Every run's config, record and scores under ``out/runs/``, replacing an earlier report's copies at once (a run
    no longer in the sweep must not stay behind as if it were)."""
    names = [run.path.name for run in runs]
    if len(set(names)) != len(names):  # a sweep's runs sit side by side, so this is another layout: keep them apart
        names = [str(run.path.relative_to(_common_parent(runs))).replace("/", "__") for run in runs]
    written = []
    with atomic_folder(out / RECORDS, replace=True) as tmp:
        for name, run in zip(names, runs):
            folder = tmp / name
            (folder / "metrics").mkdir(parents=True)
            if run.config is not None:
                write_text(folder / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(portable_config(run.config))))
            write_json(folder / "run.json", portable_record(run.record))
            for score in run.scores:
                write_json(folder / "metrics" / f"{score['protocol']}.json", portable_record(score))
            written += sorted(p for p in folder.rglob("*") if p.is_file())
    return [out / RECORDS / p.relative_to(tmp) for p in written]


def _common_parent(runs: list[Run]) -> Path:
    parents = [run.path.resolve() for run in runs]
    common = parents[0].parent
    while not all(p.is_relative_to(common) for p in parents):
        common = common.parent
    return common
