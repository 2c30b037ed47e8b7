"""Every experiment composes with every family and trains for a few steps; the sweep launchers compose cleanly.

The experiments are the studies under experiments/ (and `smoke`, the tests' own); each run here keeps the
experiment's settings but overrides its size: two steps, CPU, the suite's tiny nets.
"""

from __future__ import annotations

import warnings

import pytest
from conftest import CONF_DIR, FAMILIES, REPO, compose_train, finish_cli, requires_fmnist, start_cli, train_run
from test_first_hour import LIGHTNING_NOISE

from genbench.training.budget import Budget

STUDIES = ("fashion_mnist_default", "fashion_mnist_compare", "ddim_steps", "compute_curves", "sampler_steps")
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
PINNED = {"ddim_steps": "diffusion", "sampler_steps": "diffusion"}  # experiments that choose their family
OWN_DATA = {"cifar10_compare": "inception"}  # not Fashion-MNIST: composed and run on local data in test_presets.py
FEW_STEPS = ["hardware=cpu", "budget.max_steps=2", "budget.max_images=null", "budget.max_minutes=null", "budget.max_flops=null",
             "evaluate=false",
             "model/size=cpu", "data.on_device=false", "callbacks.fid.n_samples=32", "trainer.checkpoint_every_n_steps=1000"]  # fmt: skip


def test_every_study_of_the_issue_has_an_experiment_and_a_readme():
    assert set(STUDIES) | {"smoke"} <= set(EXPERIMENTS)
    for study in STUDIES:
        text = (REPO / "experiments" / study / "README.md").read_text()
        for needed in ("## Question", "## Commands", "## Hardware", "## Produced", f"experiment={study}",
                       "python -m genbench.report", f"results/{study}"):  # fmt: skip
            assert needed in text, f"experiments/{study}/README.md lacks {needed!r}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_experiment_composes_for_every_family(experiment, family, tmp_path):
    cfg = compose_train(tmp_path / "run", f"experiment={experiment}", f"model={family}")
    assert cfg.model.family == family
    Budget(**cfg.budget)  # exactly one budget key is set
    # pinned, so results stay comparable across machines
    assert cfg.metrics.extractor == OWN_DATA.get(experiment, "fmnist_classifier")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_sets_its_study_name_and_evaluates(experiment, tmp_path):
    """The experiment's own `name` (the sweep folder and W&B group) and `evaluate` must survive composition."""
    cfg = compose_train(tmp_path / "run", f"experiment={experiment}")
    assert cfg.name == experiment, "conf/train.yaml must list `_self_` before `experiment` in its defaults"
    assert cfg.evaluate is True


@requires_fmnist
@pytest.mark.parametrize("experiment", sorted(set(EXPERIMENTS) - set(OWN_DATA)))
def test_experiment_runs_a_few_steps(experiment, tmp_path, fmnist):
    family = PINNED.get(experiment, FAMILIES[EXPERIMENTS.index(experiment) % len(FAMILIES)])
    record = train_run(tmp_path / experiment / f"{family}-seed0", family, f"experiment={experiment}", *FEW_STEPS)
    assert record["status"] == "completed" and record["steps"] == 2 and record["family"] == family


def _with_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_launchers_compose_without_schema_matching_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Hydra's deprecated automatic schema matching warns
        slurm = _with_hydra("hydra/launcher=slurm").hydra.launcher
        joblib = _with_hydra("hydra/launcher=parallel").hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition and slurm.gpus_per_node == 1
    assert slurm.timeout_min > 0 and slurm.setup[0] == '[ -n "$WANDB_MODE" ] || export WANDB_MODE=offline'
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 2


@pytest.mark.slow
@requires_fmnist
def test_joblib_sweep_runs_jobs_in_parallel_processes(tmp_path, fmnist):
    result = finish_cli(start_cli("train", "-m", "hydra/launcher=parallel", "experiment=smoke", "name=par", "evaluate=false",
                                  "model=gan,vae", "seed=0", f"paths.runs_dir={tmp_path}"), timeout=400)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.parent.name for p in (tmp_path / "par").rglob("run.json")) == ["model-gan+seed-0", "model-vae+seed-0"]
    for line in LIGHTNING_NOISE:  # silenced in the jobs' own processes too (genbench/quiet.py)
        assert line not in result.stderr + result.stdout, line
