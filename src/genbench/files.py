"""Files written whole or not at all, and JSON written strictly and read with one error path.

Every file and folder genbench writes goes through :func:`atomic_path`, :func:`atomic_open` or
:func:`atomic_folder`: the content goes to a hidden temporary name beside the target (``.NAME.<random>.tmp``, same
folder so the rename stays on one file system), is synced to disk, and is renamed over the target, whose folder is
synced too (so the rename survives a power cut). Until the rename the target is untouched. A write that fails (a
full disk, a read-only folder, an exception in the caller) removes its temporary path before the error goes on.

A signal that ends the process (SIGTERM, SIGHUP, SIGINT where Python's KeyboardInterrupt is off) cannot run those
``finally`` blocks, so the temporary paths being written are registered while they exist, and a handler installed
only for that time removes them, then ends the process by the same signal (exit status 128 + signum, as if no
handler had been there). Where another handler was already set (Lightning's SIGTERM flag during training,
submitit's ignore, Python's KeyboardInterrupt) that handler keeps the decision: it is called instead, and the
writer's own cleanup runs when the exception it raises (if any) unwinds. ``kill -9`` leaves a temporary file that
:func:`remove_stale_temps` clears when a run folder is claimed again.

JSON: :func:`write_json` writes strict JSON (RFC 8259 has no NaN or Infinity): a non-finite float becomes ``null``.
:func:`read_json` turns a missing, unreadable or corrupt file into one :class:`GenbenchError` naming the path, or,
for callers that scan many files (reports, score stores), a warning and ``None``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import numbers
import os
import secrets
import shutil
import signal
import threading
from pathlib import Path
from typing import IO, Any, Iterator

from genbench.errors import GenbenchError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
_NAME_KEPT = 200  # of the target's name in the temporary one: NAME_MAX is 255 bytes on common file systems
CLEANUP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


# ------------------------------------------------------------------------------------- temporary paths and signals
class _LiveTemps:
    """Temporary paths this process is writing, and the signal handlers set aside while there are any."""

    def __init__(self) -> None:
        self.paths: dict[Path, int] = {}  # path -> pid of the process that made it (forked children inherit the dict)
        self.previous: dict[int, Any] = {}
        self.lock = threading.RLock()

    def add(self, path: Path) -> None:
        with self.lock:
            if not self.paths:
                self._install()
            self.paths[path] = os.getpid()

    def discard(self, path: Path) -> None:
        with self.lock:
            self.paths.pop(path, None)
            if not self.paths:
                self._uninstall()

    def remove_all(self) -> None:
        for path, pid in list(self.paths.items()):
            if pid == os.getpid():  # a forked data-loader worker must not delete its parent's files
                _remove(path)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; a write in another thread still cleans up on errors
        for signum in CLEANUP_SIGNALS:
            current = signal.getsignal(signum)
            if current is None or current is _on_signal:  # None: set outside Python, which we leave alone
                continue
            self.previous[signum] = current
            signal.signal(signum, _on_signal)

    def _uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self.previous.items():
            if signal.getsignal(signum) is _on_signal:  # unless someone replaced ours meanwhile
                signal.signal(signum, previous)
        self.previous.clear()


_LIVE = _LiveTemps()


def _on_signal(signum: int, frame) -> None:
    previous = _LIVE.previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    _LIVE.remove_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # the default action: the process ends by this signal, its status says which


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:  # removal is best effort: the error that brought us here is the one to report
        pass


def temp_path(target: Path) -> Path:
    """The hidden temporary name beside ``target`` (unique, so parallel writers of one target never collide)."""
    return target.with_name(f".{target.name[:_NAME_KEPT]}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove temporary files and folders of this scheme in ``folder`` (left by ``kill -9``); call it only where no
    other process can be writing (a locked run folder)."""
    removed = []
    for path in Path(folder).glob(f".*.????????{TEMP_SUFFIX}"):
        _remove(path)
        removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) an interrupted process left in %s", len(removed), folder)
    return removed


def check_writable(folder: str | Path) -> None:
    """Raise the machine's own OSError (read-only, permission denied, a file in the way, a full disk) now, before
    any work, if a file cannot be created in ``folder`` or, while it does not exist yet, in its nearest ancestor.
    A real write is the only test that holds for root and for read-only mounts alike (``os.access`` is not)."""
    folder = Path(folder).absolute()
    existing = next((f for f in (folder, *folder.parents) if os.path.exists(f)), folder)  # never raises
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    probe = temp_path(existing / "write-check")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:  # the folder is what the user named and can fix, not the probe's hidden name
        raise type(exc)(exc.errno, exc.strerror, str(existing)) from None
    probe.unlink()


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _name_target(exc: BaseException, tmp: Path, target: Path) -> None:
    """Let the OSErrors behind ``exc`` name ``target``, not the hidden temporary path (or nothing: a write to a file
    object, as torch.save's, raises an OSError without a name, which torch wraps in a RuntimeError)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; the bound guards against a cycle
        if seen is None:
            return
        if isinstance(seen, OSError) and (seen.filename is None or Path(str(seen.filename)) == tmp):
            seen.filename, seen.filename2 = str(target), None
        seen = seen.__cause__ or seen.__context__


@contextlib.contextmanager
def _temporary(target: Path) -> Iterator[Path]:
    tmp = temp_path(target)
    _LIVE.add(tmp)
    try:
        yield tmp
    except BaseException as exc:
        _name_target(exc, tmp, target)
        raise
    finally:
        _remove(tmp)  # nothing there after a successful rename
        _LIVE.discard(tmp)


# ------------------------------------------------------------------------------------------------- atomic writers
@contextlib.contextmanager
def atomic_path(target: str | Path, sync: bool = True) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: writer(tmp)``: for writers that open the path themselves (torch.save, PIL,
    matplotlib). ``tmp`` is renamed to ``p`` when the block ends without an exception, else removed."""
    target = Path(target)
    with _temporary(target) as tmp:
        yield tmp
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
        if sync:
            fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_open(target: str | Path, mode: str = "w", sync: bool = True, **kwargs) -> Iterator[IO]:
    """``open(target, mode)`` for writing, made atomic: the file appears whole when the block ends, or not at all."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes new files; mode {mode!r} is not a 'w' mode")
    with atomic_path(target, sync=False) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
    if sync:
        fsync_dir(Path(target).parent)


def write_text(target: str | Path, text: str) -> Path:
    with atomic_open(target, "w") as f:
        f.write(text)
    return Path(target)


@contextlib.contextmanager
def atomic_folder(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """``with atomic_folder(d) as tmp: ...fill tmp...``: ``d`` appears with all its files at once.

    ``d`` must not exist or be empty, unless ``replace``: then an existing ``d`` is swapped out and deleted once the
    new one is in place. The files inside are not synced one by one (thousands of PNGs); the rename is.
    """
    target = Path(target)
    with _temporary(target) as tmp:
        tmp.mkdir()
        yield tmp
        if replace and target.exists():
            with _temporary(target) as old:
                os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    os.replace(old, target)  # the old folder back where it was
                    raise
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)


# ----------------------------------------------------------------------------------------------------------- JSON
def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf; numpy's too) replaced by None, containers walked."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def to_json(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text: non-finite floats as null, anything else JSON lacks as its ``str``."""
    return json.dumps(finite_or_null(value), indent=indent, default=str, allow_nan=False)


def write_json(path: str | Path, value: Any) -> Path:
    """``value`` as strict JSON (:func:`to_json`), written atomically."""
    return write_text(path, to_json(value) + "\n")


def read_json(path: str | Path, skip_bad: bool = False, what: str = "file") -> Any:
    """The JSON in ``path``. A missing, unreadable or corrupt file is a GenbenchError naming it; with ``skip_bad``
    a warning and None instead (for callers that scan many files and can do without one)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if skip_bad:
            log.warning("skipping unreadable %s %s: %s", what, path, reason)
            return None
        raise GenbenchError(f"{path}: cannot read this {what} as JSON ({reason}); repair or remove it") from exc
