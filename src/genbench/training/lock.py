"""One process per run folder: an exclusive ``flock`` on ``RUN_DIR/.lock`` for as long as the process uses it.

The OS drops the lock when its holder ends, however it ends (``kill -9`` included), so a lock file left behind never
blocks a later run. The holder writes its pid into the file once it starts writing the run, so that a refused process
can say which process holds the folder.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from genbench.errors import GenbenchError

LOCK_NAME = ".lock"


class RunLock:
    """``acquire()`` or a ``genbench: error:`` naming the folder and the holder's pid; ``release()`` when done."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created = False  # this process made the lock file (a fresh folder), so it may remove it again

    def acquire(self) -> None:
        while True:
            fd, created = _open(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"pid {holder}" if holder else "a process that has not yet written its pid"
                raise GenbenchError(
                    f"{self.run_dir} is in use by another genbench process ({who}; lock file {self.path}); wait "
                    "for it to end, or start another run with another name= or seed="
                ) from None
            # A holder that gives up a folder it created removes the lock file; a lock taken on that removed file
            # guards nothing, so take it again on the file now at the path.
            if _same_file(fd, self.path):
                self.fd, self.created = fd, created
                return
            os.close(fd)

    def write_pid(self) -> None:
        assert self.fd is not None, "write_pid() needs the lock"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self, remove: bool = False) -> None:
        """Unlock; ``remove`` deletes the lock file first (only for a folder this process created and gives up)."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing the last descriptor drops the flock
        self.fd = None


def _open(path: Path) -> tuple[int, bool]:
    """The lock file's descriptor, and whether this call created it (retrying while another process removes it)."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        except FileNotFoundError:  # the folder went away between mkdir and open
            continue
        try:
            return os.open(path, os.O_RDWR), False
        except FileNotFoundError:
            continue


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
