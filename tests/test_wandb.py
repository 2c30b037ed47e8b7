"""logger=wandb, offline: the run files hold the config, losses, in-training FID, sample grids and final records,
and the report's run holds the comparison table, in the sweep's group.

wandb writes an offline run as a transaction log (``run-ID.wandb``: LevelDB-style log records of wandb's own
protobuf ``Record``); recent wandb releases no longer ship a Python reader, so :func:`wandb_records` decodes the
framing and hands each record to ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_train, requires_fmnist, train_run

BLOCK = 32768  # LevelDB log block; a record header is crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    records, pending, pos = [], b"", 7  # magic, 2-byte ident, 1-byte version
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is zero padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # still being written
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        if kind in (FULL, LAST):
            records.append(pb.Record.FromString(pending))
    return records


def _items(items) -> dict:
    """Record items as a dict; wandb splits a logged media dict into nested keys (``samples`` > ``path``)."""
    out: dict = {}
    for item in items:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = json.loads(item.value_json)
    return out


def finished_records(folder: Path, timeout: float = 60.0) -> list:
    """The records of an offline run once its log holds the final ``exit`` record.

    ``run.finish()`` can return before wandb's service process has flushed the whole log to disk.
    """
    (log_file,) = folder.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(log_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_offline_run(folder: Path) -> dict:
    """history rows, final summary, config keys, group and job type of one offline run folder."""
    out = {"history": [], "summary": {}, "config": {}, "group": None, "job_type": None}
    for record in finished_records(folder):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(_items(record.history.item))
        elif kind == "summary":
            out["summary"].update(_items(record.summary.update))
        elif kind == "config":
            out["config"].update(_items(record.config.update))
        elif kind == "run":
            out["group"], out["job_type"] = record.run.run_group, record.run.job_type
    return out


@requires_fmnist
def test_offline_run_holds_config_losses_fid_grids_records_and_the_report_table(tmp_path, fmnist):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from genbench.report import report

    run_dir = tmp_path / "runs" / "wb" / "vae-seed0"
    record = train_run(run_dir, "vae", "logger=wandb", "name=wb", "budget.max_steps=4", "callbacks.sample_grid.every_n_steps=2",
                       "callbacks.fid.every_n_steps=2", "callbacks.fid.n_samples=40", "metrics.extractor=fmnist_classifier",
                       "evaluate=true", "metrics.n_samples=100", "metrics.n_reference=500", "metrics.kid_subsets=5")  # fmt: skip
    assert record["status"] == "completed"
    assert (run_dir / "metrics.csv").is_file()  # the CSV logger stays on as the local record
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    run = read_offline_run(folder)
    assert run["group"] == "wb" and run["job_type"] == "train"
    logged = {key for row in run["history"] for key in row}
    assert {"train/loss", "train/kl", "fid", "wall_clock_s", "images_seen", "samples"} <= logged
    grids = [row["samples"] for row in run["history"] if "samples" in row]
    assert len(grids) >= 2 and all(g["_type"] == "image-file" for g in grids)
    assert all((folder / "files" / g["path"]).is_file() for g in grids)
    assert run["config"]["genbench"]["model"]["family"] == "vae"
    assert run["config"]["genbench"]["budget"]["max_steps"] == 4
    summary = run["summary"]
    assert summary["run/status"] == "completed" and summary["run/images_seen"] == record["images_seen"]
    assert summary["eval/fid"] == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["fid"])

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("report", overrides=[f"sweep={tmp_path / 'runs'}", f"out={tmp_path / 'out'}", "report.wandb=true",
                                           "report.grid_rows=1", "report.interpolation=false"])  # fmt: skip
    stamp = report(cfg)
    report_run = Path(stamp["wandb_run"])
    assert report_run.parent == tmp_path / "out" / "wandb"
    logged = read_offline_run(report_run)
    assert logged["group"] == "wb" and logged["job_type"] == "report"
    (table_file,) = (report_run / "files" / "media" / "table").glob("comparison*.table.json")
    table = json.loads(table_file.read_text())
    row = dict(zip(table["columns"], table["data"][0]))
    assert row["family"] == "vae" and row["n"] == 1 and row["fid_mean"] == pytest.approx(summary["eval/fid"], rel=1e-4)
    assert {"figures/samples", "figures/samples_vae"} <= {k for r in logged["history"] for k in r}


def test_wandb_mode_from_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    default = compose_train(tmp_path / "run", "logger=wandb").logger.extra[0]
    assert default.mode == "offline" and "offline" not in default  # the logger's offline flag would clobber WANDB_MODE
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose_train(tmp_path / "run", "logger=wandb").logger.extra[0].mode == "disabled"
