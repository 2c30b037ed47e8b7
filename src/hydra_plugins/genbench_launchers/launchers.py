"""hydra/launcher=slurm|slurm_multinode|local: hydra-submitit-launcher's launchers, checked before any job starts.

Each job's composed config is checked against the launcher's tasks (training/slurm.py), so a mismatch between SLURM
tasks and hardware.devices x hardware.num_nodes ends with ``genbench: error:`` before anything is submitted, not on
the compute node after the job has waited in the queue.
"""

from __future__ import annotations

from typing import Sequence

from hydra_plugins.hydra_submitit_launcher import submitit_launcher as plugin


class _CheckedLaunch:
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from genbench.training.slurm import check_tasks_match_hardware

        for overrides in job_overrides:
            job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            if "hardware" in job_cfg:  # a train config
                check_tasks_match_hardware(self.params, job_cfg)
        return super().launch(job_overrides, initial_job_idx)


class SlurmLauncher(_CheckedLaunch, plugin.SlurmLauncher):
    """One SLURM job array per sweep, one task per run (``sbatch --array``)."""


class LocalLauncher(_CheckedLaunch, plugin.LocalLauncher):
    """One local process per run through submitit, with submitit's timeout signal and requeue."""
