"""A run folder as one process's workspace: locked while in use, and written only once the command is accepted.

Hydra would write ``.hydra/`` and open ``train.log`` in the run folder before the task even starts. The train config
turns both off (``hydra.output_subdir: null`` and ``hydra/job_logging=genbench``, without a file handler), so a
command refused by the checks (bad input, another training config, a folder in use) leaves the folder exactly as it
found it, and a fresh folder not there at all. Log lines from before the commit wait in memory and go to
``train.log`` with the rest once the run is accepted; :meth:`RunFolder.commit` also writes what Hydra would have.

Hydra does create the run folder itself, and its missing parents (``runs/<name>/``), before the task starts. The
folder's path reads ``name`` through :func:`check_run_name` (the resolver ``genbench.run_name``, genbench/cli.py),
so a bad name is refused before that, and :class:`RunFolderCallback` (conf/hydra/default.yaml) notes which of
those folders do not exist yet, so that a refused command removes exactly them again.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from genbench.errors import GenbenchError
from genbench.files import remove_stale_temps, write_text
from genbench.training.identity import CONFIG_YAML
from genbench.training.lock import RunLock

TRAIN_LOG = "train.log"
HYDRA_RECORD = ".hydra"  # Hydra's usual output_subdir; report.collect reads its overrides.yaml
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's default job-log format
_made_for_this_run: list[Path] = []  # folders of the run path this command's Hydra creates, deepest first


def check_run_name(name) -> str:
    """``name`` as one folder name under ``paths.runs_dir``: not empty, no path separator, not ``.`` or ``..``."""
    text = "" if name is None else str(name)
    if not text.strip() or "/" in text or "\\" in text or "\0" in text or text in (".", ".."):
        raise GenbenchError(f"name={text!r}; expected one folder name for the study under paths.runs_dir (not "
                            "empty, no '/', not '.' or '..'), e.g. name=baseline")  # fmt: skip
    return text


def _normal(path: str | Path) -> Path:
    return Path(os.path.abspath(path))  # ".." resolved as mkdir(parents=True) walks it


def _missing_folders(path: Path) -> list[Path]:
    missing = []
    for folder in (path, *path.parents):
        if os.path.exists(folder):  # False also for a path the system cannot look up (a name too long)
            break
        missing.append(folder)
    return missing


def remove_folders_made_for_this_run() -> None:
    """Hydra failed to make the run folder (a name too long, a full disk): the parents it did make go again."""
    for folder in _made_for_this_run:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            continue  # never made (then its parent may have been), or not empty (then rmdir leaves those above too)
    _made_for_this_run.clear()


class RunFolderCallback(Callback):
    """Hydra's hook before it creates a single run's folder: notes which folders of its path do not exist yet.

    Hydra turns an exception here into a warning, so this hook never raises: a path it cannot read notes nothing.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            run_dir = OmegaConf.select(config, "hydra.run.dir")
            _made_for_this_run[:] = _missing_folders(_normal(run_dir)) if run_dir else []
        except Exception:  # noqa: BLE001 - a bad name= or a name too long: Hydra reports it when it makes the folder
            _made_for_this_run.clear()

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        _made_for_this_run.clear()


class RunFolder:
    """``with RunFolder(run_dir) as folder: ...checks...; folder.commit(cfg, composed); ...train...``

    ``owner=False`` (DDP ranks other than zero, which rerun the command) neither locks nor writes anything.
    """

    def __init__(self, run_dir: Path, owner: bool = True):
        self.run_dir = Path(run_dir)
        self.lock = RunLock(self.run_dir) if owner else None
        self.committed = False
        # Unbounded until commit: only the few lines of the checks and data loading come before it.
        self._pending = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
        self._log_file: logging.Handler | None = None

    def __enter__(self) -> RunFolder:
        if self.lock is not None:
            logging.getLogger().addHandler(self._pending)
            self.lock.acquire()
        return self

    def commit(self, cfg: DictConfig, composed: DictConfig) -> None:
        """The run goes ahead: its resolved config, Hydra's record of the command, its log and the lock holder's pid."""
        if self.lock is None:
            return
        self.lock.write_pid()
        for folder in (self.run_dir, self.run_dir / "checkpoints"):
            remove_stale_temps(folder)  # a kill -9 mid-write left them; the lock says no one else writes here
        write_text(self.run_dir / CONFIG_YAML, OmegaConf.to_yaml(cfg, resolve=True))
        if HydraConfig.initialized():
            hydra_cfg = HydraConfig.get()
            record = self.run_dir / HYDRA_RECORD
            record.mkdir(exist_ok=True)
            write_text(record / "config.yaml", OmegaConf.to_yaml(composed))
            write_text(record / "hydra.yaml", OmegaConf.to_yaml({"hydra": hydra_cfg}))
            write_text(record / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))
        self._log_file = logging.FileHandler(self.run_dir / TRAIN_LOG)
        self._log_file.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        self._pending.setTarget(self._log_file)
        self._pending.flush()
        root.removeHandler(self._pending)
        root.addHandler(self._log_file)
        self.committed = True

    def __exit__(self, *exc_info) -> None:
        root = logging.getLogger()
        root.removeHandler(self._pending)
        self._pending.buffer.clear()
        if self._log_file is not None:
            root.removeHandler(self._log_file)
            self._log_file.close()
        if self.lock is None:
            return
        # A folder this command made and then refused goes again; one it found keeps everything (its lock file too).
        gave_up_fresh = self.lock.created and not self.committed
        self.lock.release(remove=gave_up_fresh)
        if gave_up_fresh:
            run_dir = _normal(self.run_dir)
            made = [f for f in _made_for_this_run if f == run_dir or f in run_dir.parents]
            for folder in made or [self.run_dir]:
                try:
                    folder.rmdir()  # only when empty: Hydra made it for this command, and nothing else is in it
                except OSError:
                    break
