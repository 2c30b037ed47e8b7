"""Every run under a sweep folder: its run.json, resolved config.yaml and (when evaluated) its scores.

Scores are read from ``metrics.json`` (the run's own protocol) and ``metrics/<protocol>.json`` (every protocol it
was scored under); records written before protocol ids existed get a ``legacy-`` id from what they hold.

A run's *setting* is what it was trained under besides its family and seed: the hardware, plus every config
value that differs between runs of the same family (a swept ``model.beta`` or ``budget.max_images``, say).
Runs of one family and setting are the seeds that a table row averages.

A job whose folder was removed because it failed before training started leaves no run.json; the jobs a
Hydra sweep meant to run are read back from its ``multirun.yaml`` so that such a job is reported as missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import OmegaConf

from genbench.errors import GenbenchError
from genbench.metrics.protocol import record_protocol
from genbench.metrics.store import read_json_object, read_scores

log = logging.getLogger(__name__)

# Config keys that say where or how a run was kept or watched, never what was trained: they make no setting.
# (hardware is part of every setting by its name; metrics.* and sampler.* are the protocol's, which splits tables and rows.)
IGNORED_KEYS = {"seed", "resume", "evaluate", "data.seed"}
IGNORED_PREFIXES = ("paths.", "hydra.", "logger.", "callbacks.", "hardware.", "metrics.", "sampler.")
IGNORED_SUFFIXES = ("_dir", ".root", "checkpoint_every_n_steps", "checkpoint_every_n_minutes")


@dataclass
class Run:
    path: Path
    record: dict
    config: dict | None = None
    metrics: dict | None = None  # metrics.json: the run's own protocol (or, in a table entry, that entry's score)
    overrides: list[str] | None = None  # the Hydra job overrides (.hydra/overrides.yaml), when kept
    setting: str = ""
    scores: list[dict] = field(default_factory=list)  # every score of the run, one per protocol (metrics/*.json)

    @property
    def family(self) -> str:
        return str(self.record.get("family") or _get(self.config, "model.family") or "unknown")

    @property
    def seed(self):
        return self.record.get("seed", _get(self.config, "seed"))

    @property
    def status(self) -> str:
        return str(self.record.get("status") or "unknown")

    @property
    def hardware(self) -> str:
        """The ``hardware=`` choice when the config is there, else what run.json saw."""
        name = _get(self.config, "hardware.name")
        if name:
            return str(name)
        hw = self.record.get("hardware") or {}
        return f"{hw.get('accelerator', '?')}-{hw.get('precision', '?')}"

    @property
    def protocol(self) -> str | None:
        """The protocol id of ``metrics`` (genbench.metrics.protocol; records older than ids get a ``legacy-`` one)."""
        return None if not self.metrics else record_protocol(self.metrics).id

    @property
    def scoring_protocol(self) -> str | None:
        """The protocol without the sampler: what a table shares (a one-pass model's row beside a DDIM row)."""
        return None if not self.metrics else record_protocol(self.metrics).scoring_id

    def with_score(self, metrics: dict | None) -> "Run":
        """This run as scored under one protocol: a report table holds one such entry per run and protocol."""
        return replace(self, metrics=metrics)

    @property
    def checkpoint(self) -> Path | None:
        ckpt = self.path / "checkpoints" / "last.ckpt"
        return ckpt if ckpt.is_file() else None

    @property
    def label(self) -> str:
        return f"{self.family} seed {self.seed}" + (f" ({self.setting})" if self.setting else "")


def _get(config: dict | None, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _read_yaml(path: Path):
    if not path.is_file():
        return None
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file only costs this run its setting
        log.warning("skipping unreadable %s: %s", path, exc)
        return None


def load_run(run_json: Path) -> Run | None:
    record = read_json_object(run_json)
    if record is None:
        return None
    folder = run_json.parent
    config = _read_yaml(folder / "config.yaml")
    metrics, scores = read_scores(folder)
    overrides = _read_yaml(folder / ".hydra" / "overrides.yaml")
    return Run(folder, record, config if isinstance(config, dict) else None, metrics,
               [str(o) for o in overrides] if isinstance(overrides, list) else None, scores=scores)  # fmt: skip


def find_runs(sweep: Path) -> list[Run]:
    """Every run.json under ``sweep`` (recursively), ordered by family, then folder."""
    sweep = Path(sweep).expanduser()
    if not sweep.is_dir():
        raise GenbenchError(f"sweep={sweep} is not a folder (expected a sweep or run folder holding run.json files)")
    paths = sorted(p for p in sweep.rglob("run.json") if not any(part.startswith(".") for part in p.parts[-3:]))
    runs = [run for run in map(load_run, paths) if run is not None]
    if not runs:
        raise GenbenchError(f"no run.json under {sweep} (expected the folder of a `genbench.train` run or sweep)")
    assign_settings(runs)
    return sorted(runs, key=lambda r: (r.family, r.setting, _seed_key(r.seed), str(r.path)))


def _seed_key(seed) -> tuple:
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))


def _flatten(node, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True, default=str)}


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES)


def _follows_seed(value: str | None, seed) -> bool:
    return value is not None and (value == json.dumps(seed) or f"seed{seed}" in value)


def assign_settings(runs: list[Run]) -> None:
    """``run.setting``: ``hardware`` plus ``key=value`` for each config value that varies within the family."""
    by_family: dict[str, list[Run]] = {}
    for run in runs:
        by_family.setdefault(run.family, []).append(run)
    for family_runs in by_family.values():
        flat = [(_flatten(r.config) if r.config else {}) for r in family_runs]
        keys = sorted({k for f in flat for k in f})
        varying = []
        for key in keys:
            values = [f.get(key) for f in flat]
            if len(set(values)) < 2 or _ignored(key):
                continue
            # Values that follow the seed (a W&B run name `FAMILY-seed1`, say) are the seed, not a setting.
            if all(_follows_seed(v, r.seed) for r, v in zip(family_runs, values)):
                continue
            varying.append(key)
        for run, f in zip(family_runs, flat):
            parts = [run.hardware] + [f"{k}={json.loads(f[k]) if k in f else '∅'}" for k in varying]
            run.setting = ", ".join(str(p) for p in parts)


def expected_jobs(sweep: Path) -> list[tuple[Path, list[str]]]:
    """(sweep folder, overrides) of every job the Hydra sweeps under ``sweep`` meant to run (from multirun.yaml)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    jobs = []
    for multirun in sorted(Path(sweep).rglob("multirun.yaml")):
        cfg = _read_yaml(multirun)
        sweeper = _get(cfg, "hydra.sweeper._target_") or ""
        task = _get(cfg, "hydra.overrides.task")
        if not isinstance(task, list) or not sweeper.endswith("BasicSweeper"):
            continue
        try:
            parsed = OverridesParser.create().parse_overrides([str(t) for t in task])
            batches = BasicSweeper.split_arguments(parsed, None)
        except Exception as exc:  # noqa: BLE001 - an unusual sweep only loses this check
            log.warning("cannot expand the sweep in %s (%s); missing jobs are not checked", multirun, exc)
            continue
        jobs += [(multirun.parent, job) for batch in batches for job in batch]
    return jobs


def missing_jobs(sweep: Path, runs: list[Run]) -> list[str]:
    """Sweep jobs with no run.json: they failed before training started (or have not run yet)."""
    found = [set(r.overrides) for r in runs if r.overrides is not None]
    jobs = expected_jobs(sweep)
    swept = {o for _, job in jobs for o in job if sum(o in other for _, other in jobs) < len(jobs)}  # not in every job
    return [f"{', '.join(o for o in job if o in swept) or ', '.join(job)} (sweep {folder})"
            for folder, job in jobs if set(job) not in found]  # fmt: skip
