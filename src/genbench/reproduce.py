"""``python -m genbench.reproduce RESULTS_DIR``: retrain and rescore every run of a results folder from its own record.

A report copies each run's resolved config, run.json and scores into ``RESULTS_DIR/runs/`` (:mod:`genbench.report.
records`). This command reads them back and, for every run:

1. retrains it from its config to the step it recorded (``budget.max_steps`` = its ``steps``: a wall-clock or any
   other budget becomes the steps it reached, so the work is the same on any machine, under any load);
2. rescores the new checkpoint under every protocol the run was scored under (the score's own metrics settings and
   sampler settings);
3. prints recorded against reproduced for every cell, with the seeds' spread as the yardstick where a row has
   several seeds, and writes it all to ``OUT/reproduce.json``.

Everything that could stop it is checked before any training: the configs must compose and pass the schema, the
hardware must be there, and every protocol must come out with its recorded id here (the extractor's weights and
their hash, the reference data's fingerprint, the counts and the sampler settings all enter the id), so a missing
extractor file or other data is one ``genbench: error:`` line, not a table of quietly different numbers.

The options are argparse's rather than Hydra's ``key=value``: the command takes a folder, and every training and
scoring setting comes from the records in it, not from a config to override.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from genbench.errors import GenbenchError
from genbench.report.records import RECORDS

log = logging.getLogger("genbench.reproduce")
#: the score fields compared, as the report's tables show them
SCORE_FIELDS = ("fid", "fid_inf", "kid_mean", "is_mean", "is_inf", "precision", "recall", "density", "coverage",
                "memorization")  # fmt: skip
#: run.json fields that must come out the same
RUN_FIELDS = ("steps", "images_seen", "weights_sha256")


@dataclass
class Recorded:
    """One run of a results folder: its folder name there, resolved config, run.json and scores."""

    name: str
    config: dict
    record: dict
    scores: list[dict]

    @property
    def family(self) -> str:
        return str(self.record.get("family"))


def read_results(results: Path) -> list[Recorded]:
    """The runs recorded in ``results`` (a report's out= folder)."""
    folder = results / RECORDS
    if not results.is_dir():
        raise GenbenchError(f"{results} is not a folder (expected a report's results folder, e.g. results/fashion_mnist_default)")
    if not folder.is_dir():
        raise GenbenchError(f"{results} holds no run records ({RECORDS}/): it was written by a report older than "
                            "genbench.reproduce; write it again with python -m genbench.report sweep=… out=…")  # fmt: skip
    runs = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not (run / "config.yaml").is_file() or not (run / "run.json").is_file():
            raise GenbenchError(f"{run} lacks config.yaml or run.json: its run cannot be rebuilt")
        scores = [json.loads(p.read_text()) for p in sorted((run / "metrics").glob("*.json"))]
        config = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
        runs.append(Recorded(run.name, config, json.loads((run / "run.json").read_text()), scores))
    if not runs:
        raise GenbenchError(f"{folder} holds no runs")
    return runs


def local_config(recorded: Recorded, out: Path, changes: list[str] = ()) -> DictConfig:
    """The run's training config with this machine's folders, into ``out/<name>``, to the steps it recorded, with
    ``changes`` (``KEY=VALUE``, ``--set``) applied: a deliberate difference, such as another precision."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from genbench.cli import CONF_DIR

    if recorded.record.get("status") != "completed" or not recorded.record.get("steps"):
        raise GenbenchError(f"{recorded.name}: its run ended {recorded.record.get('status')!r} "
                            f"({recorded.record.get('stop_reason')}), so there is no finished run to reproduce")  # fmt: skip
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None, job_name="reproduce"):
        here = compose("train")
    cfg = OmegaConf.create(recorded.config)
    with open_dict(cfg):
        cfg.paths = OmegaConf.merge(here.paths, {"output_dir": str(out / recorded.name)})
        cfg.data.cache_dir = here.data.cache_dir
        cfg.metrics.cache_dir = here.metrics.cache_dir
        cfg.budget = {key: None for key in here.budget} | {"max_steps": int(recorded.record["steps"])}
        cfg.evaluate = False  # scored below, under every recorded protocol
        cfg.resume = "auto"  # a reproduction stopped halfway continues where it was
    for change in changes:
        key, _, value = change.partition("=")
        if not value or key.split(".")[0] in ("budget", "paths", "seed") or OmegaConf.select(cfg, key) is None:
            raise GenbenchError(f"--set {change}: expected KEY=VALUE for a key the runs' configs have "
                                "(not budget.*, paths.* or seed, which a reproduction takes from the record)")  # fmt: skip
        OmegaConf.update(cfg, key, yaml.safe_load(value))  # as YAML reads it: 32-true text, 0.5 float, [1, 2] list
    return cfg


def check_protocols(recorded: Recorded, cfg: DictConfig) -> list:
    """A plan per recorded score, each with its recorded protocol id here, else the one line saying what differs."""
    from hydra.utils import instantiate

    from genbench.metrics import plan_model_evaluation
    from genbench.models import build_model
    from genbench.sampling import sampler_settings

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    model = build_model(cfg.model, datamodule.image_shape, datamodule.num_classes, datamodule.class_names)
    plans = []
    for score in recorded.scores:
        config = dict(score["metrics_config"]) | {"cache_dir": cfg.metrics.cache_dir}
        settings = score.get("sampler_settings")
        plan = plan_model_evaluation(model, config, datamodule, None if settings is None else sampler_settings(model, settings))
        if plan.protocol.id != score["protocol"]:
            fields, here = score.get("protocol_fields", {}), plan.protocol.fields
            differ = sorted(k for k in set(fields) | set(here) if fields.get(k) != here.get(k)) or ["the protocol id"]
            raise GenbenchError(f"{recorded.name}: protocol {score['protocol']} cannot be rebuilt here: it comes out as "
                                f"{plan.protocol.id} ({', '.join(f'{k}: recorded {fields.get(k)!r}, here {here.get(k)!r}' for k in differ)})")  # fmt: skip
        plans.append((score, plan))
    return plans


def retrain_and_rescore(recorded: Recorded, cfg: DictConfig, plans: list) -> tuple[dict, list[dict]]:
    """Retrain, then rescore under every recorded protocol; protocols that differ only by extractor share one
    sampling, as they did when the run was scored (``metrics.extractors``)."""
    from genbench.metrics import run_model_evaluations
    from genbench.models import load_checkpoint
    from genbench.train import train

    record = train(cfg)
    model, _ = load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu")
    same_images: dict[str, list[int]] = {}
    for i, (_, plan) in enumerate(plans):
        key = json.dumps([plan.n_fake, plan.sampler, plan.config.seed], sort_keys=True, default=str)
        same_images.setdefault(key, []).append(i)
    scores: list[dict | None] = [None] * len(plans)
    for indices in same_images.values():
        for i, score in zip(indices, run_model_evaluations(model, [plans[i][1] for i in indices])):
            scores[i] = score
    return record, scores


def compare(runs: list[Recorded], reproduced: dict[str, tuple[dict, list[dict]]]) -> list[dict]:
    """A row per cell: run, protocol, field, recorded, reproduced, difference, and the spread of the recorded value
    over the seeds of the run's family and protocol (None with one seed)."""
    spread: dict[tuple, list[float]] = {}
    for run in runs:
        for score in run.scores:
            for key in SCORE_FIELDS:
                if isinstance(score.get(key), (int, float)):
                    spread.setdefault((run.family, score["protocol"], key), []).append(float(score[key]))
    cells = []
    for run in runs:
        record, scores = reproduced[run.name]
        for key in RUN_FIELDS:
            if key in run.record:
                cells.append(_cell(run, "run.json", key, run.record[key], record.get(key), None))
        for recorded, new in zip(run.scores, scores):
            for key in SCORE_FIELDS:
                if key in recorded or key in new:
                    values = spread.get((run.family, recorded["protocol"], key), [])
                    std = statistics.stdev(values) if len(values) > 1 else None
                    cells.append(_cell(run, recorded["protocol"], key, recorded.get(key), new.get(key), std))
    return cells


def _cell(run: Recorded, where: str, key: str, recorded, reproduced, spread: float | None) -> dict:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (recorded, reproduced))
    return {"run": run.name, "family": run.family, "seed": run.record.get("seed"), "where": where, "field": key,
            "recorded": recorded, "reproduced": reproduced, "same": recorded == reproduced,
            "difference": (reproduced - recorded) if numeric else None, "seed_spread": spread}  # fmt: skip


def print_cells(cells: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="recorded against reproduced")
    for column in ("run", "where", "field", "recorded", "reproduced", "difference", "seeds' spread"):
        table.add_column(column, justify="right" if column in ("recorded", "reproduced", "difference") else "left")
    def show(value) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value)[:12] + "…" if isinstance(value, str) and len(value) > 16 else str(value)  # a hash

    for c in cells:
        style = None if c["same"] else "yellow"
        table.add_row(c["run"], c["where"], c["field"], show(c["recorded"]), show(c["reproduced"]),
                      "same" if c["same"] else show(c["difference"]), show(c["seed_spread"]), style=style)  # fmt: skip
    Console(width=200).print(table)
    differ = [c for c in cells if not c["same"]]
    print(f"{len(cells) - len(differ)} of {len(cells)} cells reproduced exactly" +
          ("" if not differ else f"; {len(differ)} differ (see 'difference' against the seeds' spread)"))  # fmt: skip


def reproduce(results: Path, out: Path, only: list[str] | None = None, changes: list[str] = ()) -> list[dict]:
    from genbench.files import check_writable, write_json
    from genbench.train import preflight

    runs = [r for r in read_results(results) if not only or r.name in only or r.family in only]
    if not runs:
        raise GenbenchError(f"no run of {results} is named or of a family in {only}")
    check_writable(out if out.exists() else out.parent)
    configs = {run.name: local_config(run, out, changes) for run in runs}
    plans = {}
    for run in runs:  # everything that could stop it, before the first run trains
        preflight(configs[run.name])
        plans[run.name] = check_protocols(run, configs[run.name])
    reproduced = {run.name: retrain_and_rescore(run, configs[run.name], plans[run.name]) for run in runs}
    cells = compare(runs, reproduced)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "reproduce.json", {"results": str(results), "changed": list(changes), "cells": cells})
    if changes:
        print(f"reproduced with deliberate changes: {' '.join(changes)}")
    print_cells(cells)
    print(f"wrote {out / 'reproduce.json'}")
    return cells


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genbench.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a report's results folder, e.g. results/fashion_mnist_default")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the reproduced runs go (default runs/reproduce/<results folder name>)")
    parser.add_argument("--only", nargs="+", default=None, help="run folder names or families to reproduce")
    parser.add_argument("--set", dest="changes", action="append", default=[], metavar="KEY=VALUE",
                        help="change a training setting on purpose, e.g. hardware.precision=32-true, to measure "
                             "what it moves (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    # the log on stdout, as the other commands' (conf/hydra/job_logging/stdout.yaml): stderr has the error line alone
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    out = args.out or Path("runs") / "reproduce" / args.results.resolve().name
    try:
        reproduce(args.results, out, args.only, args.changes)
    except GenbenchError as exc:
        print(f"genbench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
