"""A run folder as one process's workspace: locked while in use, and written only once the command is accepted.

Hydra would write ``.hydra/`` and open ``train.log`` in the run folder before the task even starts. The train config
turns both off (``hydra.output_subdir: null`` and ``hydra/job_logging=genbench``, without a file handler), so a
command refused by the checks (bad input, another training config, a folder in use) leaves the folder exactly as it
found it, and a fresh folder not there at all. Log lines from before the commit wait in memory and go to
``train.log`` with the rest once the run is accepted; :meth:`RunFolder.commit` also writes what Hydra would have.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from genbench.training.identity import CONFIG_YAML
from genbench.training.lock import RunLock

TRAIN_LOG = "train.log"
HYDRA_RECORD = ".hydra"  # Hydra's usual output_subdir; report.collect reads its overrides.yaml
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's default job-log format


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
        OmegaConf.save(cfg, self.run_dir / CONFIG_YAML, resolve=True)
        if HydraConfig.initialized():
            hydra_cfg = HydraConfig.get()
            record = self.run_dir / HYDRA_RECORD
            record.mkdir(exist_ok=True)
            (record / "config.yaml").write_text(OmegaConf.to_yaml(composed))
            (record / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": hydra_cfg}))
            (record / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra_cfg.overrides.task))
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
            try:
                self.run_dir.rmdir()  # only when empty: Hydra made it for this command, and nothing else is in it
            except OSError:
                pass
