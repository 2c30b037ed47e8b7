"""The one atomic writer, strict JSON and the one JSON reader (genbench.files), and the one device choice.

All in-process and fast: a write that fails (an exception, a full disk) leaves the target as it was and no temporary
path behind; signal handlers are set only while a temporary path exists and chain to whatever was there before.
"""

from __future__ import annotations

import ast
import errno
import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from genbench import files
from genbench.devices import pick_device
from genbench.errors import GenbenchError, user_error_message
from genbench.files import atomic_folder, atomic_open, atomic_path, read_json, write_json, write_text

SRC = Path(__file__).resolve().parents[1] / "src" / "genbench"


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(files.TEMP_SUFFIX)]


def test_a_file_appears_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_open(target) as f:
        f.write("first")
        assert not target.exists() and len(leftovers(tmp_path)) == 1  # written under a hidden name until the end
    assert target.read_text() == "first" and leftovers(tmp_path) == []
    write_text(target, "second")
    assert target.read_text() == "second" and leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "record.json"
    write_json(target, {"v": 1})
    with pytest.raises(ValueError):
        with atomic_open(target) as f:
            f.write('{"v": 2, "half')
            raise ValueError("the caller failed mid-write")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("a path writer failed")
    assert read_json(target) == {"v": 1} and leftovers(tmp_path) == []


def test_a_full_disk_names_the_target_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old checkpoint")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError) as caught:
        with atomic_open(target, "wb") as f:
            torch.save({"w": torch.zeros(3)}, f)
    assert caught.value.filename == str(target)  # not the hidden temporary name
    assert user_error_message(caught.value) == f"{target}: no space left on device"
    assert target.read_bytes() == b"old checkpoint" and leftovers(tmp_path) == []


def test_torch_save_on_a_real_full_file_system_leaves_nothing(tmp_path):
    """A 1 MB tmpfs (we run as root in CI; skipped where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(RuntimeError) as caught:  # torch wraps the OSError of its file object
            with atomic_open(mount / "big.pt", "wb") as f:
                torch.save({"w": torch.zeros(1_000_000)}, f)
        assert user_error_message(caught.value) == f"{mount / 'big.pt'}: no space left on device"
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_folder_appears_with_all_its_files_or_not_at_all(tmp_path):
    out = tmp_path / "samples"
    with pytest.raises(KeyError):
        with atomic_folder(out) as tmp:
            (tmp / "a.png").write_bytes(b"a")
            raise KeyError("interrupted")
    assert not out.exists() and leftovers(tmp_path) == []
    with atomic_folder(out) as tmp:
        (tmp / "a.png").write_bytes(b"a")
        assert not out.exists()
    assert [p.name for p in out.iterdir()] == ["a.png"]
    with atomic_folder(out, replace=True) as tmp:  # a cache entry rebuilt: the old one goes once the new one is in
        (tmp / "b.png").write_bytes(b"b")
    assert [p.name for p in out.iterdir()] == ["b.png"] and leftovers(tmp_path) == []


def test_stale_temporaries_of_a_killed_process_are_removed(tmp_path):
    (tmp_path / ".last.ckpt.0123abcd.tmp").write_bytes(b"half")
    (tmp_path / ".samples.89abcdef.tmp").mkdir()
    (tmp_path / "keep.tmp").write_text("not ours")
    assert len(files.remove_stale_temps(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp"]


def test_json_is_strict_non_finite_floats_become_null(tmp_path):
    import numpy as np

    path = write_json(tmp_path / "score.json", {"fid": float("nan"), "kid": [float("inf"), 1.5], "n": 3,
                                               "is": np.float32("-inf"), "ok": np.float64(2.0), "when": Path("x")})  # fmt: skip

    def refuse(constant):
        raise AssertionError(f"bare {constant} in the file")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"fid": None, "kid": [None, 1.5], "n": 3,
                                                                    "is": None, "ok": 2.0, "when": "x"}  # fmt: skip


def test_a_corrupt_or_missing_json_file_is_one_error_naming_it(tmp_path, caplog):
    corrupt = tmp_path / "run.json"
    corrupt.write_text('{"status": "runn')
    for path in (corrupt, tmp_path / "absent.json", tmp_path):
        with pytest.raises(GenbenchError, match=str(path).replace(".", r"\.")):
            read_json(path, what="run record")
    with caplog.at_level(logging.WARNING, logger="genbench.files"):
        assert read_json(corrupt, skip_bad=True) is None
    assert str(corrupt) in caplog.text


def _note(signum, frame):
    _note.calls.append(signum)


def test_signal_handlers_are_set_only_while_writing_and_chain_to_the_previous_one(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    _note.calls = []
    signal.signal(signal.SIGTERM, _note)  # as Lightning's flag during training
    try:
        with atomic_open(tmp_path / "a.txt") as f:
            assert signal.getsignal(signal.SIGTERM) is files._on_signal
            os.kill(os.getpid(), signal.SIGTERM)  # the previous handler decides: here it only notes the signal
            f.write("still written")
        assert _note.calls == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is _note  # given back once no temporary path is left
        assert (tmp_path / "a.txt").read_text() == "still written" and leftovers(tmp_path) == []
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as submitit's during a SLURM job
        with atomic_open(tmp_path / "b.txt") as f:
            os.kill(os.getpid(), signal.SIGTERM)
            f.write("ignored")
        assert (tmp_path / "b.txt").read_text() == "ignored"
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_while_writing_removes_the_temporary(tmp_path):
    # Ctrl-C as a user's shell sends it, to Python's own handler (which raises KeyboardInterrupt), whatever handler an
    # earlier test in this worker process left behind; raise_signal delivers it to this thread.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic_folder(tmp_path / "out") as tmp:
                (tmp / "x.png").write_bytes(b"x")
                signal.raise_signal(signal.SIGINT)  # the block unwinds through atomic_folder's cleanup
    finally:
        signal.signal(signal.SIGINT, previous)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["bogus", "gpu", "cuda:x"])
def test_one_device_choice_names_the_key(name):
    with pytest.raises(GenbenchError, match=f"report.device={name}"):
        pick_device(name, "report.device")
    assert pick_device("cpu").type == "cpu" and pick_device("auto").type in ("cpu", "cuda")


def test_no_hand_written_temp_and_rename_writer_is_left():
    """Every writer goes through genbench.files: no other module renames files into place."""
    for path in SRC.rglob("*.py"):
        if path.name in ("files.py", "devices.py"):
            continue
        text = path.read_text()
        assert "os.replace(" not in text and ".rename(" not in text, f"{path} renames files itself"


def test_training_modules_import_nothing_from_the_models():
    """The upward import is gone: genbench.training sits below genbench.models."""
    for path in (SRC / "training").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert not [m for m in imported if m.startswith("genbench.models")], f"{path.name} imports {imported}"


def test_check_writable_probes_the_nearest_existing_folder_and_leaves_nothing(tmp_path):
    files.check_writable(tmp_path / "not" / "yet" / "made")  # tmp_path is where the folders would be made
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError) as caught:
        files.check_writable(tmp_path / "a_file" / "scores")
    assert user_error_message(caught.value).startswith(f"{tmp_path / 'a_file'}: not a folder")
