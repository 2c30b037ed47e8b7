"""kill -9 at any moment after the first checkpoint, then the same command: the run ends exactly where an
uninterrupted one ends (every weight, EMA and optimizer tensor ``torch.equal`` on CPU, and the same run.json counts).

Each family trains 40 batches of 16 from 64 images (10 epochs, flips on), checkpointing every 3 batches. The
killed run is watched until ``last.ckpt`` has been replaced a random number of times, then SIGKILLed after a
further random pause, so kills land mid-epoch, at epoch ends, in the middle of a checkpoint write and during the
final steps. ``GENBENCH_RESUME_SEED`` replays a failing draw (the seed is in every assertion message).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import FAMILIES, finish_cli, run_cli_batch, start_cli, tiny_overrides

pytestmark = [pytest.mark.usefixtures("fmnist"), pytest.mark.slow]  # about 70 s on two CPU cores
STEPS, EVERY = 40, 3
RUN = [f"budget.max_steps={STEPS}", f"trainer.checkpoint_every_n_steps={EVERY}", "data.flip=true"]


def command(family: str, runs_dir: Path) -> list[str]:
    return [*tiny_overrides(family), *RUN, f"paths.runs_dir={runs_dir}"]


def run_dir(runs_dir: Path, family: str) -> Path:
    return runs_dir / "default" / f"{family}-seed0"


def kill_after_a_random_checkpoint(process, checkpoint: Path, rng: random.Random) -> str:
    """SIGKILL ``process`` a random pause after ``checkpoint`` has been written a random number of times."""
    saves, wanted, inode = 0, rng.randint(1, STEPS // EVERY - 1), None
    while process.poll() is None and saves < wanted:
        try:
            current = checkpoint.stat().st_ino  # every save renames a new file over it
        except FileNotFoundError:
            current = None
        if current is not None and current != inode:
            saves, inode = saves + 1, current
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.3))
    if process.poll() is not None:
        return f"exited by itself after {saves} checkpoints"
    process.send_signal(signal.SIGKILL)
    process.wait()
    during = any(checkpoint.parent.glob(".last.ckpt.*.tmp"))  # genbench.files' temporary name for last.ckpt
    return f"killed {'during' if during else 'after'} save {saves}"


def tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the model (EMA included) and of the optimizers, by a flat name."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    flat = {f"state_dict.{k}": v for k, v in ckpt["state_dict"].items()}
    for i, opt in enumerate(ckpt["optimizer_states"]):
        for param, state in opt["state"].items():
            flat |= {f"optimizer{i}.{param}.{k}": v for k, v in state.items() if torch.is_tensor(v)}
    return flat


def test_kill_9_then_the_same_command_ends_where_an_uninterrupted_run_ends(tmp_path):
    seed = int(os.environ.get("GENBENCH_RESUME_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    killed = {family: start_cli("train", *command(family, resumed)) for family in FAMILIES}
    with ThreadPoolExecutor(len(FAMILIES)) as pool:  # each run watched from its start
        watchers = {f: pool.submit(kill_after_a_random_checkpoint, p, run_dir(resumed, f) / "checkpoints" / "last.ckpt",
                                   random.Random(rng.random())) for f, p in killed.items()}  # fmt: skip
        outcome = {f: w.result() for f, w in watchers.items()}
    for process in killed.values():
        if process.returncode != -signal.SIGKILL:
            finish_cli(process)
    jobs = {f"{f}-again": ("train", command(f, resumed)) for f in FAMILIES}
    jobs |= {f"{f}-reference": ("train", command(f, reference)) for f in FAMILIES}
    results = run_cli_batch(jobs, tmp_path / "logs")
    for family in FAMILIES:
        context = f"{family}: {outcome[family]} (GENBENCH_RESUME_SEED={seed})"
        for job in (f"{family}-again", f"{family}-reference"):
            assert results[job].returncode == 0, f"{context}\n{results[job].stderr[-3000:]}"
        want, got = (tensors(run_dir(r, family) / "checkpoints" / "last.ckpt") for r in (reference, resumed))
        assert want.keys() == got.keys(), context
        differ = [k for k in want if not torch.equal(want[k], got[k])]
        assert not differ, f"{context}: {len(differ)} of {len(want)} tensors differ, e.g. {differ[:3]}"
        records = [json.loads((run_dir(r, family) / "run.json").read_text()) for r in (reference, resumed)]
        for key in ("status", "stop_reason", "steps", "images_seen"):
            assert records[0][key] == records[1][key], f"{context}: run.json {key}"
        assert records[1]["steps"] == STEPS and records[1]["images_seen"] == STEPS * 16, context
        print(context)  # shown with -s: where each kill landed
