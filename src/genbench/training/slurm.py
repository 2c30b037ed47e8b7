"""SLURM through submitit: requeue that resumes from the latest step, and the check of tasks against hardware.

Who owns the requeue signal
---------------------------
Two libraries want to handle a SLURM job's pre-timeout signal, and two handlers racing lose progress or requeue twice:

* submitit (hydra-submitit-launcher runs every job inside ``submitit.core._submit``) installs a handler for its
  signal (``--signal=USR2@signal_delay_s``, ``SUBMITIT_PREEMPT_SIGNAL``) that calls the launcher's ``checkpoint``,
  pickles the resubmission, runs ``scontrol requeue`` and exits; it ignores SIGTERM, which SLURM sends on
  preemption and on ``scancel`` alike.
* Lightning's ``SLURMEnvironment(auto_requeue=True)`` (its default on SLURM) handles SIGUSR1 by saving
  ``hpc_ckpt_N.ckpt`` from inside the signal handler (possibly mid-step) and running ``scontrol requeue`` itself,
  and its SIGTERM handler ends training at the next batch (SIGTERMException).

submitit owns it here: it submitted the job, holds the pickled call to run again, counts time-outs
(``max_num_timeout``) and tells a time-out from a preemption. Lightning is given ``SLURMEnvironment(auto_requeue=
False)``, so it reads ranks and nodes from SLURM but installs no requeue handler. What submitit lacks is a
checkpoint of the latest step, taken at a step boundary: :class:`RequeueOnSignal` catches submitit's signal during
training, lets the current step finish (EMA updated, images counted, as every checkpoint here), saves
``last.ckpt`` and then hands the signal to submitit's own handler, which requeues. The requeued job runs the same
command, and ``resume=auto`` continues from that ``last.ckpt``. During training it also keeps SIGTERM with
submitit (ignored) rather than with Lightning, which would end the run before the requeue signal arrives.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Checkpoint

from genbench.errors import GenbenchError
from genbench.training.checkpoint_io import LAST

log = logging.getLogger(__name__)


def under_submitit() -> bool:
    """True inside a job that submitit started (SLURM or its local executor), where its signal handlers are set."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


class Requeued(SystemExit):
    """This process ends because its job was requeued; the requeued job resumes from ``last.ckpt``.

    A SystemExit, as submitit's own exit is: submitit writes no result for it, so the launcher waits for the
    requeued job, and the run record says why this process stopped.
    """


class RequeueOnSignal(Checkpoint):
    """On submitit's requeue signal: finish the step, save ``last.ckpt``, then let submitit requeue the job.

    A ``Checkpoint`` subclass, so Lightning calls it after every other callback's ``on_train_batch_end`` (and after
    :class:`~genbench.training.checkpoint_io.PeriodicCheckpoint`): the saved step is complete.
    """

    def __init__(self, checkpoints: Path):
        from submitit import JobEnvironment

        self.path = Path(checkpoints) / LAST
        self.signum = JobEnvironment._usr_sig()  # USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
        self.received = False
        self._submitit = {self.signum: signal.getsignal(self.signum), signal.SIGTERM: signal.getsignal(signal.SIGTERM)}

    def _note(self, signum: int, frame: Any) -> None:
        self.received = True  # acted on at the next step boundary: nothing else is safe inside a signal handler

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Before the data loaders start their workers, which inherit this handler (and so never requeue themselves).
        # Only for fit: during the test pass and the evaluation submitit requeues at once (the run resumes there).
        if stage == "fit":
            signal.signal(self.signum, self._note)

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning set its SIGTERM handler just before this hook; submitit's (ignore it) goes back in its place.
        signal.signal(signal.SIGTERM, self._submitit[signal.SIGTERM])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.strategy.broadcast(self.received):  # rank 0 requeues; every rank saves with it
            self._save_and_requeue(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.strategy.broadcast(self.received):  # arrived after the last step: requeue before the evaluation
            self._save_and_requeue(trainer)
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, handler in self._submitit.items():
            signal.signal(signum, handler)

    def _save_and_requeue(self, trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        step = trainer.global_step
        log.warning("%s received: saved %s at global step %d; handing over to submitit to requeue",
                    signal.Signals(self.signum).name, self.path, step)  # fmt: skip
        self.teardown(trainer, None, "fit")
        try:
            # rank 0: the launcher's checkpoint(), scontrol requeue, sys.exit; the other ranks return
            self._submitit[self.signum](self.signum, None)
        except SystemExit:
            raise Requeued(f"requeued after {signal.Signals(self.signum).name} at global step {step}; the requeued "
                           f"job resumes from {self.path}") from None  # fmt: skip
        # Not rank 0: SLURM stops this task when rank 0's requeue takes effect.
        self.received = False


def cluster_hooks(run_dir: Path, callbacks: list, plugins: list) -> tuple[list, list]:
    """``callbacks`` and ``plugins`` for the Trainer, with the SLURM/submitit hooks added where they apply."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():  # ranks and nodes from SLURM, but the requeue signal stays with submitit
        plugins = [*plugins, SLURMEnvironment(auto_requeue=False)]
    if under_submitit():
        callbacks = [*callbacks, RequeueOnSignal(Path(run_dir) / "checkpoints")]
    return callbacks, plugins


# --- the launchers' check (src/hydra_plugins/genbench_launchers) ---


def check_tasks_match_hardware(launcher: DictConfig | dict, cfg: DictConfig) -> None:
    """Lightning's SLURMEnvironment trains with one process per SLURM task, so the job's tasks must be exactly the
    training processes ``hardware`` asks for: tasks_per_node = hardware.devices, nodes = hardware.num_nodes."""
    hw = cfg.hardware
    nodes, tasks = int(launcher.get("nodes") or 1), int(launcher.get("tasks_per_node") or 1)
    gpus = launcher.get("gpus_per_node")
    hw_nodes, devices = hw.get("num_nodes", 1), hw.devices
    if devices == -1 or devices == "auto":  # every visible device: on a GPU node, the GPUs the job asks for
        devices = gpus if hw.accelerator == "gpu" and gpus else tasks
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        devices = len(devices)
    problems = []
    if not isinstance(devices, int) or tasks != devices:
        problems.append(f"hydra.launcher.tasks_per_node={tasks} but hardware.devices={hw.devices}")
    if nodes != hw_nodes:
        problems.append(f"hydra.launcher.nodes={nodes} but hardware.num_nodes={hw_nodes}")
    if hw.accelerator == "gpu" and gpus is not None and int(gpus) < tasks:
        problems.append(f"hydra.launcher.gpus_per_node={gpus} is fewer than tasks_per_node={tasks}")
    if problems:
        example = ("hydra.launcher.nodes=2 hydra.launcher.tasks_per_node=8 hydra.launcher.gpus_per_node=8 "
                   "hardware=ddp hardware.num_nodes=2 hardware.devices=8")  # fmt: skip
        raise GenbenchError(f"SLURM tasks must match the training processes (one task per device): "
                            f"{'; '.join(problems)}. Set both, e.g. {example}")  # fmt: skip
