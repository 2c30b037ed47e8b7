"""Hydra entry points that honour the contract's error format.

Hydra reports a bad override or a failing job by printing a multi-line message and exiting with
code 1. The contract asks for one ``genbench: error:`` line and exit code 2 for bad input, so each
entry point runs Hydra through :func:`hydra_entry`, which swaps Hydra's reporter for one that maps
user errors (config composition, override syntax, :class:`GenbenchError`) to that line and leaves
every other exception to Hydra. ``HYDRA_FULL_ERROR=1`` still shows the full traceback.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra._internal import utils as hydra_utils
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from genbench.errors import user_error_message
from genbench.quiet import quiet_lightning

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# Characters a folder name keeps as they are: letters, digits and those of Hydra's unquoted override values (its
# grammar's ID and UNQUOTED_CHAR) that neither a shell nor a path reads specially. "%" (also unquoted there)
# starts the escape for everything else; "/", backslash, "$", "*", "?", "|", ":" and "@" are escaped.
_NOT_PATH_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def path_safe(text: str) -> str:
    """``text`` with every other character percent-encoded (UTF-8), so distinct texts stay distinct names.

    Sweep folders are named from their jobs' overrides (conf/hydra/default.yaml), which Hydra copies verbatim: a
    ``data.root=/x`` would nest folders, and a ``[``, ``,`` or ``=`` would need quoting in ``ckpt=``.
    """
    return _NOT_PATH_SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), str(text))


def run_name(name) -> str:
    """``name`` as the run path uses it (conf/hydra/default.yaml): one folder name, refused before Hydra makes it."""
    from genbench.training.run_folder import check_run_name  # the rule lives with the run folder

    return check_run_name(name)


OmegaConf.register_new_resolver("genbench.path_safe", path_safe, replace=True)
OmegaConf.register_new_resolver("genbench.run_name", run_name, replace=True)
def _make_reporter(original: Callable) -> Callable:
    def run_and_report(func: Callable):
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return original(func)
        try:
            return func()
        except Exception as exc:  # noqa: BLE001 - anything not ours goes back to Hydra's reporter
            message = user_error_message(exc)
            if message is None:
                return original(lambda: (_ for _ in ()).throw(exc))
            from genbench.training.run_folder import remove_folders_made_for_this_run

            remove_folders_made_for_this_run()  # an error before the task: Hydra may have made part of the run path
            print(f"genbench: error: {message}", file=sys.stderr)
            sys.exit(2)

    return run_and_report


def _single_run_exits(task: Callable[[DictConfig], object]) -> Callable[[DictConfig], object]:
    """In a single run, leave straight from the task on a user error, before Hydra adds its own stderr line.

    In a sweep the error goes back to Hydra, so that the other jobs still run.
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig):
        quiet_lightning()  # here, in the job's own process: launchers run jobs in other processes (genbench/quiet.py)
        try:
            return task(cfg)
        except Exception as exc:  # noqa: BLE001 - filtered below
            message = user_error_message(exc)
            multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
            if message is None or multirun or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"genbench: error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapped


def hydra_entry(task: Callable[[DictConfig], object], config_name: str) -> Callable[[], None]:
    """A console-script ``main`` running ``task`` under Hydra with the contract's error handling."""
    task = _single_run_exits(task)

    def main() -> None:
        if not getattr(hydra_utils.run_and_report, "_genbench", False):
            reporter = _make_reporter(hydra_utils.run_and_report)
            reporter._genbench = True  # type: ignore[attr-defined]
            hydra_utils.run_and_report = reporter
        hydra.main(version_base=None, config_path=CONF_DIR, config_name=config_name)(task)()

    return main
