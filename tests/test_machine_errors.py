"""The machine's errors as one line, a full disk, signals, and nothing left behind by a refused command.

* A read-only folder, a file where a folder belongs, a full disk: ``genbench: error: <path>: <what was wrong>``,
  exit 2, for train, sample and evaluate. Read-only folders are read-only tmpfs mounts (tests run as root, which
  ``chmod`` does not stop); where mounting is not allowed those cases are skipped and the OSError mapping is still
  checked in-process.
* Training that fills its disk ends ``failed`` with the reason, leaves no temporary file and resumes once space is
  back: on a real 1 MB tmpfs where we may mount one, and everywhere with a checkpoint writer made to fail.
* SIGTERM while ``sample`` writes its PNGs leaves neither the hidden temporary folder nor ``out``.
* A refused ``train`` (a bad override, a bad name, an unusable folder) leaves no new folder, parents included.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.errors import InstantiationException

from conftest import TINY_MODEL, TINY_RUN, _cli_kwargs, assert_contract_error, run_cli, run_cli_batch, train_run
from genbench.errors import MACHINE_ERRNOS as MESSAGES
from genbench.errors import user_error_message
from genbench.files import TEMP_SUFFIX, read_json
from genbench.training.run_folder import check_run_name

FAST_EVAL = ["metrics.n_samples=50", "metrics.n_reference=200", "metrics.heldout_split=val", "metrics.kid_subsets=2",
             "metrics.extractor=fmnist_classifier", "metrics.memorization=false"]  # fmt: skip


def mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode == 0


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(f"*{TEMP_SUFFIX}")]


# ------------------------------------------------------------------------------------------------ in-process rules
@pytest.mark.parametrize(("code", "words"), [
    (errno.EACCES, "permission denied"), (errno.EPERM, "not permitted"), (errno.EROFS, "read-only file system"),
    (errno.ENOTDIR, "not a folder"), (errno.EISDIR, "is a folder"), (errno.ENOSPC, "no space left on device"),
    (errno.ENAMETOOLONG, "file name too long"),
])  # fmt: skip
def test_the_machines_errors_are_one_line_naming_the_path(code, words):
    error = OSError(code, os.strerror(code), "/data/runs")
    assert user_error_message(error) == f"/data/runs: {MESSAGES[code]}" and words in MESSAGES[code]
    try:  # as Hydra's instantiate wraps it
        raise InstantiationException("Error in call to target 'x'") from error
    except InstantiationException as wrapped:
        assert user_error_message(wrapped) == f"/data/runs: {MESSAGES[code]}"
    assert user_error_message(OSError(errno.ECONNRESET, "reset")) is None  # not the user's to fix: a traceback


@pytest.mark.parametrize("name", ["../../x", "", "a/b", ".", "..", None, "a\\b"])
def test_a_run_name_is_one_folder_name(name):
    with pytest.raises(Exception, match="name=") as caught:
        check_run_name(name)
    assert user_error_message(caught.value).startswith("name=")
    assert check_run_name("baseline_2") == "baseline_2" and check_run_name(3) == "3"


# -------------------------------------------------------------------------------------------- refused commands
@pytest.fixture(scope="module")
def gan_ckpt(tmp_path_factory, fmnist) -> Path:
    root = tmp_path_factory.mktemp("gan")
    train_run(root / "gan", "gan", "budget.max_steps=2")
    return root / "gan" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def refused(tmp_path_factory, gan_ckpt):
    root = tmp_path_factory.mktemp("refused")
    a_file = root / "a_file"
    a_file.write_text("not a folder\n")
    read_only = root / "read_only"
    mounted = mount_tmpfs(read_only, "ro,size=64k")
    existing = root / "existing" / "runs" / "default" / "gan-seed0"
    existing.mkdir(parents=True)
    (existing / "notes.txt").write_text("mine\n")
    corrupt = root / "corrupt" / "runs" / "default" / "gan-seed0"
    corrupt.mkdir(parents=True)
    (corrupt / "run.json").write_text('{"status": "runn')
    train = {
        "runs_dir_is_a_file": ([f"paths.runs_dir={a_file}"], [str(a_file), "not a folder"]),
        "cache_is_a_file": ([f"paths.runs_dir={root / 'c1' / 'runs'}", f"paths.cache_dir={a_file}"],
                            [str(a_file), "not a folder"]),
        "name_escapes": ([f"paths.runs_dir={root / 'n1' / 'runs'}", "name=../../escaped"], ["name='../../escaped'"]),
        "name_empty": ([f"paths.runs_dir={root / 'n2' / 'runs'}", "name="], ["name=''"]),
        "name_nested": ([f"paths.runs_dir={root / 'n3' / 'runs'}", "name=a/b"], ["name='a/b'"]),
        "name_too_long": ([f"paths.runs_dir={root / 'n4' / 'runs'}", f"name={'x' * 300}"], ["file name too long"]),
        "bad_override": ([f"paths.runs_dir={root / 'fresh' / 'runs'}", "budget.max_steps=-3"], ["budget.max_steps=-3"]),
        "bad_override_existing": ([f"paths.runs_dir={root / 'existing' / 'runs'}", "model=gan", "budget.max_steps=-3"],
                                  ["budget.max_steps=-3"]),
        "corrupt_run_json": ([f"paths.runs_dir={root / 'corrupt' / 'runs'}", "model=gan"],
                             [str(corrupt / "run.json"), "run record"]),
    }  # fmt: skip
    others = {
        "sample_out_under_a_file": ("sample", [f"ckpt={gan_ckpt}", "n=2", f"out={a_file}/o"], [str(a_file), "not a folder"]),
        "evaluate_out_under_a_file": ("evaluate", [f"ckpt={gan_ckpt}", f"out={a_file}/s.json", *FAST_EVAL],
                                      [str(a_file), "not a folder"]),
    }  # fmt: skip
    if mounted:
        train["runs_dir_read_only"] = ([f"paths.runs_dir={read_only}/runs"], [str(read_only), "read-only file system"])
        train["cache_read_only"] = ([f"paths.runs_dir={root / 'c2' / 'runs'}", f"paths.cache_dir={read_only}/cache"],
                                    [str(read_only), "read-only file system"])  # fmt: skip
        others["sample_out_read_only"] = ("sample", [f"ckpt={gan_ckpt}", "n=2", f"out={read_only}/o"],
                                          [str(read_only), "read-only file system"])  # fmt: skip
        others["evaluate_out_read_only"] = ("evaluate", [f"ckpt={gan_ckpt}", f"out={read_only}/s.json", *FAST_EVAL],
                                            [str(read_only), "read-only file system"])  # fmt: skip
    cases = {name: ("train", args, words) for name, (args, words) in train.items()} | others
    try:
        results = run_cli_batch({name: (module, args) for name, (module, args, _) in cases.items()}, root / "logs")
    finally:
        if mounted:
            subprocess.run(["umount", str(read_only)], check=True)
    return root, cases, results, mounted


CASE_NAMES = ["runs_dir_is_a_file", "cache_is_a_file", "name_escapes", "name_empty", "name_nested", "name_too_long",
              "bad_override", "bad_override_existing", "corrupt_run_json", "sample_out_under_a_file",
              "evaluate_out_under_a_file", "runs_dir_read_only", "cache_read_only", "sample_out_read_only",
              "evaluate_out_read_only"]  # fmt: skip


@pytest.mark.parametrize("case", CASE_NAMES)
def test_an_unusable_path_is_one_line_and_leaves_nothing(refused, case):
    root, cases, results, mounted = refused
    if case not in results:
        pytest.skip("read-only tmpfs mounts are not allowed here")
    assert_contract_error(results[case], *cases[case][2])
    assert "Traceback" not in results[case].stderr


def test_a_refused_train_leaves_no_new_folder_not_even_a_parent(refused):
    root, _, _, _ = refused
    for made in ("c1", "c2", "n1", "n2", "n3", "n4", "fresh", "escaped", "runs"):
        assert not (root / made).exists(), f"{root / made} was left behind"
    existing = root / "existing" / "runs" / "default" / "gan-seed0"
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]  # no .lock, no config.yaml added
    corrupt = root / "corrupt" / "runs" / "default" / "gan-seed0"
    assert sorted(p.name for p in corrupt.iterdir()) == ["run.json"]
    assert (root / "a_file").read_text() == "not a folder\n"


# ------------------------------------------------------------------------------------------------------- full disk
def assert_last_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """A disk that fills during the work: the work's log lines, then one error line, exit 2, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert [line for line in lines if "genbench: error:" in line] == lines[-1:], result.stderr[-3000:]
    assert all(word in lines[-1] for word in words), lines[-1]


def _assert_failed_for_space(run_dir: Path, steps: int) -> None:
    record = read_json(run_dir / "run.json")
    assert record["status"] == "failed" and "no space left on device" in record["stop_reason"], record
    assert record["steps"] == steps, record
    assert temporaries(run_dir) == [], "a temporary file stayed behind"


def test_a_full_disk_ends_failed_and_the_rerun_resumes(tmp_path, fmnist, monkeypatch, caplog):
    """Everywhere: the checkpoint writer made to fail at the second save, after writing part of the file."""
    import torch

    from genbench.training import checkpoint_io

    real_save, saves = torch.save, []

    def disk_full_at_second_save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    run_dir = tmp_path / "gan-seed0"
    args = ("budget.max_steps=4", "trainer.checkpoint_every_n_steps=1")
    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full_at_second_save)
    with pytest.raises(OSError) as caught:
        train_run(run_dir, "gan", *args)
    assert user_error_message(caught.value) == f"{run_dir / 'checkpoints' / 'last.ckpt'}: no space left on device"
    _assert_failed_for_space(run_dir, steps=2)
    monkeypatch.setattr(checkpoint_io.torch, "save", real_save)
    with caplog.at_level(logging.INFO, logger="genbench.train"):
        record = train_run(run_dir, "gan", *args)
    assert "resuming from" in caplog.text and record["status"] == "completed" and record["steps"] == 4
    assert temporaries(run_dir) == []


def test_training_on_a_full_tmpfs_is_one_line_and_continues_once_space_is_back(tmp_path, fmnist):
    """A 1 MB tmpfs holds one tiny GAN checkpoint (about 0.6 MB) but not a second one written beside it."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "size=1m"):
        pytest.skip("cannot mount a tmpfs here")
    args = ["model=gan", *TINY_MODEL["gan"], *TINY_RUN, f"paths.runs_dir={disk}", "name=full", "budget.max_steps=4",
            "trainer.checkpoint_every_n_steps=1"]  # fmt: skip
    run_dir = disk / "full" / "gan-seed0"
    try:
        full = run_cli("train", *args)
        assert_last_line_error(full, "no space left on device", str(run_dir))  # after Lightning's start-up lines
        _assert_failed_for_space(run_dir, steps=2)
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        again = run_cli("train", *args)
        assert again.returncode == 0, again.stderr[-3000:]
        record = read_json(run_dir / "run.json")
        assert record["status"] == "completed" and record["steps"] == 4, record
        assert "resuming from" in (run_dir / "train.log").read_text()
        assert temporaries(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_evaluate_out_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, gan_ckpt):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "size=64k"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        filler = disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k", "count=64"], capture_output=True)  # fills it
        result = run_cli("evaluate", f"ckpt={gan_ckpt}", f"out={disk}/score.json", *FAST_EVAL)
        assert_last_line_error(result, f"{disk}/score.json", "no space left on device")
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --------------------------------------------------------------------------------------------------------- signals
def test_sigterm_while_sample_writes_pngs_leaves_no_temporary_folder(tmp_path, gan_ckpt):
    out = tmp_path / "o"
    process = subprocess.Popen([sys.executable, "-m", "genbench.sample", f"ckpt={gan_ckpt}", "n=20000", f"out={out}"],
                               **_cli_kwargs(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline, hidden = time.monotonic() + 240, []
    try:
        while time.monotonic() < deadline and process.poll() is None:  # until the first PNGs are in the hidden folder
            hidden = [p for p in tmp_path.glob(f".o.*{TEMP_SUFFIX}") if any(p.iterdir())]
            if hidden:
                break
            time.sleep(0.02)
        assert hidden and process.poll() is None, "sample ended before it was signalled"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGTERM  # ended by the signal, as without a handler
    assert sorted(tmp_path.iterdir()) == [], f"left behind: {sorted(tmp_path.iterdir())}"
