"""One run folder, one training config, one process; sweep folders usable as ``ckpt=`` paths.

The rule (which keys shape training) is tested directly; the command line is tested on one real run: commands with
another training config are refused by name and leave the folder byte-identical, repeats are no-ops, a larger
budget resumes, and a second process is refused while a real training process holds the folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, _cli_kwargs, assert_contract_error, run_cli_batch, tiny_overrides
from genbench.errors import GenbenchError
from genbench.training.identity import ABSENT, training_differences
from genbench.training.lock import LOCK_NAME, RunLock

# ---------------------------------------------------------------------- the rule

BASE = {
    "seed": 0, "name": "default", "resume": "auto", "evaluate": False,
    "model": {"family": "gan", "loss": "hinge", "compile": False, "g_optimizer": {"lr": 2e-4, "betas": [0.0, 0.9]}},
    "data": {"source": "fashion_mnist", "root": None, "subset": 64, "batch_size": 16, "num_workers": 0,
             "on_device": False, "cache_dir": "/a"},
    "trainer": {"log_every_n_steps": 25, "checkpoint_every_n_steps": 500, "gradient_clip_val": None},
    "hardware": {"name": "cpu", "accelerator": "cpu", "devices": 1, "precision": "32-true", "strategy": "auto"},
    "budget": {"max_steps": 20, "max_images": None, "max_minutes": None},
    "sampler": {"name": "ddim", "steps": 50}, "metrics": {"n_samples": 1000}, "logger": {"extra": []},
    "callbacks": {"sample_grid": {"every_n_steps": 250}}, "paths": {"output_dir": "/runs/x"},
}  # fmt: skip


def changed(**dotted) -> dict:
    """BASE with dotted keys replaced (a value of ABSENT deletes the key)."""
    import copy

    config = copy.deepcopy(BASE)
    for key, value in dotted.items():
        *parents, leaf = key.split("__")
        node = config
        for part in parents:
            node = node[part]
        if value is ABSENT:
            del node[leaf]
        else:
            node[leaf] = value
    return config


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(model__loss="wgan_gp"), "model.loss"),
        (dict(model__g_optimizer__betas=[0.5, 0.9]), "model.g_optimizer.betas"),
        (dict(data__subset=32), "data.subset"),
        (dict(data__batch_size=64), "data.batch_size"),
        (dict(seed=1), "seed"),
        (dict(trainer__gradient_clip_val=1.0), "trainer.gradient_clip_val"),
        (dict(hardware__precision="bf16-mixed"), "hardware.precision"),
        (dict(hardware__devices=2), "hardware.devices"),
        (dict(model__loss=ABSENT), "model.loss"),
    ],
)
def test_a_change_that_shapes_training_is_named(change, key):
    diffs = training_differences(BASE, changed(**change))
    assert [d[0] for d in diffs] == [key]


@pytest.mark.parametrize(
    "change",
    [
        dict(budget__max_steps=40), dict(budget__max_steps=None, budget__max_minutes=3.0), dict(resume="never"),
        dict(evaluate=True), dict(name="other"), dict(sampler__steps=4), dict(metrics__n_samples=50),
        dict(logger__extra=[{"_target_": "W"}]), dict(callbacks__sample_grid__every_n_steps=5),
        dict(trainer__log_every_n_steps=1), dict(trainer__checkpoint_every_n_steps=7), dict(data__num_workers=4),
        dict(data__on_device=True), dict(data__cache_dir="/b"), dict(data__root="/elsewhere"),
        dict(hardware__name="gpu", hardware__accelerator="gpu"), dict(model__compile=True), dict(hardware__compile=True),
        dict(hardware__channels_last=True), dict(hardware__fused_optimizer=False),
        dict(paths__output_dir="/runs/y"),
    ],
)  # fmt: skip
def test_a_change_that_does_not_shape_training_is_allowed(change):
    assert training_differences(BASE, changed(**change)) == []


def test_data_root_is_the_data_for_an_image_folder():
    old = changed(data__source="imagefolder", data__root="/pets")
    assert [d[:3] for d in training_differences(old, changed(data__source="imagefolder", data__root="/cars"))] == [
        ("data.root", "/pets", "/cars")
    ]


# ---------------------------------------------------------------------- the lock


def test_a_held_folder_is_refused_with_the_holders_pid_and_freed_when_released(tmp_path):
    first = RunLock(tmp_path / "run")
    first.acquire()
    first.write_pid()
    with pytest.raises(GenbenchError, match=rf"in use by another genbench process \(pid {os.getpid()};"):
        RunLock(tmp_path / "run").acquire()  # a second open file: flock refuses it even within one process
    first.release()
    second = RunLock(tmp_path / "run")
    second.acquire()
    assert not second.created  # the file stays; the OS lock is what counts
    second.release()


def test_a_lock_on_a_removed_file_is_taken_again(tmp_path):
    """A holder that gives up a fresh folder removes its lock file; a waiter must not keep a lock on the old file."""
    run = tmp_path / "run"
    holder = RunLock(run)
    holder.acquire()
    stale_fd = os.open(run / LOCK_NAME, os.O_RDWR)  # a second process opened the file, then lost the race
    holder.release(remove=True)
    lock = RunLock(run)
    lock.acquire()
    assert lock.created and (run / LOCK_NAME).exists()
    assert os.fstat(stale_fd).st_ino != (run / LOCK_NAME).stat().st_ino
    os.close(stale_fd)
    lock.release()


# ---------------------------------------------------------------------- sweep folder names


@pytest.mark.parametrize(
    "overrides",
    [
        ["hardware=cpu", "model=diffusion"],
        ["model=gan", "seed=0", "model.loss=wgan_gp", "model.g_optimizer.lr=2e-4", "hardware.precision=bf16-mixed"],
        ["data.root=/data/pets", "model.net.attention_resolutions=[7,14]", "+trainer.gradient_clip_val=1.0"],
        ["data=hf", "data.name='uoft-cs/cifar10'", "seed=-1", "model.beta=1e+1"],
    ],
)
def test_sweep_folder_names_work_unquoted_as_ckpt_paths(overrides):
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    import genbench.cli  # noqa: F401 - registers genbench.path_safe, as every entry point does

    parser = OverridesParser.create()
    hydra_cfg = OmegaConf.load(REPO / "conf" / "hydra" / "default.yaml")
    dirname_cfg = hydra_cfg.job.config.override_dirname
    dirname = get_overrides_dirname(parser.parse_overrides(overrides), [], dirname_cfg.item_sep, dirname_cfg.kv_sep)
    cfg = OmegaConf.create({"hydra": {**OmegaConf.to_container(hydra_cfg), "job": {"override_dirname": dirname}}})
    folder = cfg.hydra.sweep.subdir  # through genbench.path_safe, as Hydra resolves it
    assert "/" not in folder and "," not in folder and "=" not in folder
    path = f"runs/study/{folder}/checkpoints/last.ckpt"
    (ckpt,) = parser.parse_overrides([f"ckpt={path}"])
    assert ckpt.value() == path


def test_distinct_overrides_get_distinct_folders():
    from genbench.cli import path_safe

    names = {path_safe(text) for text in ("a-/x", "a-%2Fx", "a- x", "a-:x", "a-[1,2]", "a-[1%2C2]")}
    assert len(names) == 6


# ---------------------------------------------------------------------- the command line on one real run

TINY = [*tiny_overrides("gan"), "budget.max_steps=2", "trainer.checkpoint_every_n_steps=1"]
# name -> (extra overrides, the words of the error line, or None for a no-op that exits 0)
AGAINST_THE_RUN = {
    "other_loss": (["model.loss=wgan_gp"], ["model.loss hinge -> wgan_gp", "name=", "seed=", "remove"]),
    "other_loss_larger_budget": (["model.loss=wgan_gp", "model.d_steps=2", "budget.max_steps=6"],
                                 ["model.d_steps 1 -> 2", "model.loss hinge -> wgan_gp"]),
    "other_width": (["model.generator.base_channels=16"], ["model.generator.base_channels 8 -> 16"]),
    "other_subset": (["data.subset=32"], ["data.subset 64 -> 32"]),
    "bad_input_on_existing_run": (["trainer.log_every_n_steps=0"], ["trainer.log_every_n_steps=0"]),
    "same_command": ([], None),
    "smaller_budget": (["budget.max_steps=1"], None),
    "settings_that_do_not_shape_training": (
        ["sampler.steps=2", "trainer.log_every_n_steps=5", "callbacks.sample_grid.n=4", "data.num_workers=1"], None),
}  # fmt: skip


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def one_run(tmp_path_factory, fmnist):
    """A finished tiny GAN run made by the command line, and the outcomes of commands run against it.

    A real training process holds a second folder (``busy``) meanwhile, for the lock test.
    """
    root = tmp_path_factory.mktemp("identity")
    run, grown, busy = root / "run", root / "grown", root / "busy"
    holder_log = root / "holder.err"
    with open(holder_log, "w") as err:  # a file, not a pipe: a full pipe would stall the holder
        holder = subprocess.Popen(
            [sys.executable, "-m", "genbench.train", *tiny_overrides("diffusion"), "budget.max_steps=null",
             "budget.max_minutes=10", f"hydra.run.dir={busy}"],
            **_cli_kwargs(None), stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:  # the holder starts while the first run trains
        first = run_cli_batch({"first": ("train", [*TINY, f"hydra.run.dir={run}"])}, root / "logs_first")["first"]
        assert first.returncode == 0, first.stderr[-3000:]
        shutil.copytree(run, grown)  # the same run elsewhere (paths do not shape training), to grow its budget
        before = snapshot(run)
        holder_pid = wait_for_lock_holder(busy / LOCK_NAME, holder, holder_log)
        jobs = {"busy": ("train", [*tiny_overrides("diffusion"), f"hydra.run.dir={busy}"])}
        jobs |= {name: ("train", [*TINY, *extra, f"hydra.run.dir={run}"]) for name, (extra, _) in AGAINST_THE_RUN.items()}
        jobs["grow"] = ("train", [*TINY, "budget.max_steps=4", f"hydra.run.dir={grown}"])
        outcomes = run_cli_batch(jobs, root / "logs")
        holder_alive = holder.poll() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    return dict(run=run, grown=grown, before=before, after=snapshot(run), outcomes=outcomes, holder_pid=holder_pid,
                holder_alive=holder_alive, busy=busy)  # fmt: skip


def wait_for_lock_holder(lock_file: Path, process: subprocess.Popen, log: Path, timeout: float = 240) -> int:
    """The pid in the lock file once the training process has accepted its run (it writes the pid then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the lock-holding run ended early: {log.read_text()[-3000:]}")
        text = lock_file.read_text().strip() if lock_file.exists() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.5)
    pytest.fail("the lock-holding run never wrote its pid")


@pytest.mark.parametrize("case", [c for c, (_, words) in AGAINST_THE_RUN.items() if words is not None])
def test_another_training_config_is_refused_by_name(one_run, case):
    line = assert_contract_error(one_run["outcomes"][case], *AGAINST_THE_RUN[case][1])
    assert str(one_run["run"]) in line or case == "bad_input_on_existing_run"


@pytest.mark.parametrize("case", [c for c, (_, words) in AGAINST_THE_RUN.items() if words is None])
def test_the_same_training_config_with_no_more_budget_is_a_no_op(one_run, case):
    result = one_run["outcomes"][case]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already completed its budget" in result.stdout and "nothing to do" in result.stdout


def test_refused_and_no_op_commands_leave_the_run_folder_byte_identical(one_run):
    assert {".hydra/overrides.yaml", "train.log", "config.yaml", "run.json", "checkpoints/last.ckpt", "metrics.csv",
            LOCK_NAME} <= {str(p) for p in one_run["before"]}  # fmt: skip
    assert one_run["after"] == one_run["before"]


def test_a_larger_budget_resumes_the_run(one_run):
    import json

    result = one_run["outcomes"]["grow"]
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((one_run["grown"] / "run.json").read_text())
    assert (record["status"], record["steps"]) == ("completed", 4)


def test_a_second_process_is_refused_while_a_training_process_holds_the_folder(one_run):
    assert one_run["holder_alive"], "the holder ended before the second process tried"
    line = assert_contract_error(one_run["outcomes"]["busy"], str(one_run["busy"]), "in use by another genbench process")
    assert f"pid {one_run['holder_pid']}" in line
