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

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        import shutil

        from genbench.errors import GenbenchError

        # submitit would stop with a traceback ("Could not detect srun") after composing every job
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise GenbenchError(f"hydra/launcher=slurm needs SLURM's {' and '.join(missing)} on PATH (not found on "
                                "this machine); submit from a SLURM login node, or try the sweep here with "
                                "hydra/launcher=local")  # fmt: skip
        return super().launch(job_overrides, initial_job_idx)


class LocalLauncher(_CheckedLaunch, plugin.LocalLauncher):
    """One local process per run through submitit, with submitit's timeout signal and requeue."""
