"""Budgets stop where they say, runs resume instead of restarting, and a diverging loss ends the run as 'diverged'."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

import genbench.models.diffusion
import genbench.train
from conftest import HARDWARE_FIELDS, RUN_FIELDS, run_cli, tiny_overrides, train_run
from genbench.errors import GenbenchError
from genbench.models import Diverged, load_checkpoint
from genbench.models.vae import VAEModule

BATCH = 16  # conftest's TINY_RUN batch size

pytestmark = pytest.mark.usefixtures("fmnist")


def read_record(run_dir) -> dict:
    return json.loads((run_dir / "run.json").read_text())


# ---------------------------------------------------------------------- budgets
@pytest.mark.parametrize("max_images, steps", [(40, 3), (32, 2)])  # batches of 16: 16, 32, 48, ...
def test_max_images_stops_at_the_first_batch_that_reaches_it(tmp_path, max_images, steps):
    record = train_run(tmp_path / "run", "vae", "budget.max_steps=null", f"budget.max_images={max_images}")
    assert record["stop_reason"] == "budget.max_images" and record["status"] == "completed"
    assert (record["steps"], record["images_seen"]) == (steps, steps * BATCH)
    assert read_record(tmp_path / "run")["images_seen"] == steps * BATCH


def test_max_minutes_on_the_command_line_replaces_the_default_budget(tmp_path):
    """`budget.max_minutes=…` alone is a valid budget: the default max_steps is nulled (Hydra really in play)."""
    result = run_cli("train", *tiny_overrides("vae"), "budget.max_minutes=0.02", f"paths.runs_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "default" / "vae-seed0"
    record = read_record(run_dir)
    assert record["status"] == "completed" and record["stop_reason"] == "budget.max_minutes"
    assert record["budget"] == {"max_steps": None, "max_images": None, "max_minutes": 0.02, "max_flops": None}
    assert record["train_seconds"] >= 0.02 * 60 and record["steps"] > 0
    assert OmegaConf.load(run_dir / "config.yaml").budget.max_steps is None


@pytest.mark.parametrize(
    "budget, spent, expected",
    [
        (dict(max_steps=10), dict(steps=3), "3/10 batches"),
        (dict(max_images=240000), dict(images=12800), "12,800/240,000 images"),
        (dict(max_minutes=3.0), dict(train_seconds=90.0), "1.5/3 min"),
        (dict(max_minutes=0.25), dict(train_seconds=6.0), "0.10/0.25 min"),
        (dict(max_flops="20T"), dict(flops=1.234e12), "1.23T/20T FLOPs"),
    ],
)
def test_progress_bar_counts_the_budget_in_its_own_unit(budget, spent, expected):
    """Runs have max_epochs=-1 (budgets stop them); the training bar counts the budget, not the epoch's batches."""
    from rich.progress import Progress

    from genbench.training.budget import Budget, BudgetCallback
    from genbench.training.callbacks import BudgetProgressBar, budget_spent

    budget_cb = BudgetCallback(Budget(**budget))
    for key, value in spent.items():
        setattr(budget_cb, key, value)
    bar = BudgetProgressBar()
    bar._trainer = SimpleNamespace(callbacks=[budget_cb])
    completed, total, unit = budget_spent(budget_cb)
    progress = Progress()
    task_id = progress.add_task(bar._get_train_description(2), total=total, completed=completed, unit=unit)
    task = progress.tasks[task_id]
    (count,) = [c for c in bar.configure_columns(bar._trainer) if type(c).__name__ == "_SpentColumn"]
    assert count.render(task).plain == expected and task.description == "Epoch 2"


def test_two_budget_keys_in_a_composed_config_are_refused(tmp_path):
    # Outside a command line nothing nulls the default max_steps, so this config holds two budgets.
    with pytest.raises(GenbenchError, match="exactly one of budget"):
        train_run(tmp_path / "run", "vae", "budget.max_images=100")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- resume
@pytest.fixture
def resumed(tmp_path, monkeypatch):
    """A 2-step run, then the same command with budget.max_steps=5; counts the batches the second session trains."""
    run_dir = tmp_path / "run"
    first = train_run(run_dir, "vae", "budget.max_steps=2")
    trained_batches = []
    real_step = VAEModule.training_step

    def counting_step(self, batch, batch_idx):
        if not self._warming_up:  # the FLOP count runs the step once on a twin (genbench.training.flops): not training
            trained_batches.append(batch_idx)
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(VAEModule, "training_step", counting_step)
    second = train_run(run_dir, "vae", "budget.max_steps=5", "resume=auto")
    return SimpleNamespace(run_dir=run_dir, first=first, second=second, trained_batches=trained_batches)


def test_resume_auto_continues_the_step_count(resumed):
    assert (resumed.first["steps"], resumed.first["images_seen"]) == (2, 2 * BATCH)
    assert resumed.second["status"] == "completed" and resumed.second["stop_reason"] == "budget.max_steps"
    assert (resumed.second["steps"], resumed.second["images_seen"]) == (5, 5 * BATCH)
    assert len(resumed.trained_batches) == 3, "the resumed run trained from scratch instead of continuing"
    assert read_record(resumed.run_dir)["steps"] == 5
    model, _ = load_checkpoint(resumed.run_dir / "checkpoints" / "last.ckpt")
    assert model.images_seen == 5 * BATCH


def test_resume_keeps_the_earlier_sessions_losses_in_metrics_csv(resumed):
    with open(resumed.run_dir / "metrics.csv") as f:
        steps = {int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")}
    assert steps >= {0, 1, 2, 3, 4}, sorted(steps)


def test_resume_must_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(GenbenchError, match="resume=must"):
        train_run(tmp_path / "run", "vae", "budget.max_steps=2", "resume=must")
    assert not (tmp_path / "run").exists()


def test_resume_never_refuses_an_existing_run_and_leaves_it_alone(tmp_path):
    run_dir = tmp_path / "run"
    train_run(run_dir, "vae", "budget.max_steps=2")
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(GenbenchError, match="resume=never"):
        train_run(run_dir, "vae", "budget.max_steps=4", "resume=never")
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


# ---------------------------------------------------------------------- divergence
def test_exploding_learning_rate_ends_the_run_as_diverged(tmp_path):
    with pytest.raises(Diverged, match=r"vae: loss term 'loss' became non-finite at step \d+"):
        train_run(tmp_path / "run", "vae", "model.optimizer.lr=1e30", "budget.max_steps=20")
    record = read_record(tmp_path / "run")
    assert record["status"] == "diverged" and "vae" in record["stop_reason"] and "loss" in record["stop_reason"]
    assert record["steps"] < 20 and record["finished"]


def test_nan_between_checks_is_caught_at_the_end_with_its_step(tmp_path, monkeypatch):
    """The loss is checked only every log_every_n_steps; a NaN after the last check is still reported, with its step."""
    real_loss = genbench.models.diffusion.diffusion_loss
    calls = []

    def nan_from_step_2(*args, **kwargs):
        calls.append(None)
        loss = real_loss(*args, **kwargs)
        return loss * math.nan if len(calls) > 2 else loss

    monkeypatch.setattr(genbench.models.diffusion, "diffusion_loss", nan_from_step_2)
    monkeypatch.setattr(genbench.train, "train_flops", lambda *args: None)  # its count's loss call is no training step
    with pytest.raises(Diverged, match=r"diffusion: loss term 'loss' became non-finite at step 3; training stopped "
                                       r"at step 4 \(run.json: status diverged, diverged_at_step 3\)"):
        train_run(tmp_path / "run", "diffusion", "budget.max_steps=4", "trainer.log_every_n_steps=25")
    record = read_record(tmp_path / "run")  # the third batch's loss went NaN; the check at the end found it
    assert record["status"] == "diverged" and record["steps"] == 4 and record["diverged_at_step"] == 3
    assert record["stop_reason"] == "diffusion: loss term 'loss' became non-finite at step 3"


# ---------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_gpu_run_records_its_hardware(tmp_path):
    record = train_run(tmp_path / "run", "diffusion", "hardware=gpu_bf16", "budget.max_steps=3")
    assert RUN_FIELDS <= record.keys() and HARDWARE_FIELDS <= record["hardware"].keys()
    assert record["status"] == "completed" and record["steps"] == 3
    assert record["hardware"]["accelerator"] == "cuda" and record["hardware"]["precision"] == "bf16-mixed"
    assert record["hardware"]["devices"] == 1 and record["peak_mem_mb"] > 0
    model, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cuda")
    images = model.sample(4, generator=torch.Generator(device="cuda").manual_seed(0), steps=4)
    assert images.is_cuda and images.shape == (4, 1, 28, 28) and images.abs().max() <= 1
