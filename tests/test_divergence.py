"""Every family's divergence ends the same way: one error line naming the family and the step, exit 2, run.json
``diverged`` at that step, and the last good checkpoint (if one was saved) kept with finite weights.

The GAN's losses never go NaN when it blows up (they grow past 1e6), so its case also checks ``model.loss_limit``.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import run_cli_batch, tiny_overrides
from genbench.models import load_checkpoint

BATCH = 16  # TINY_RUN's data.batch_size
# Learning rates that blow each tiny model up within a few batches on Fashion-MNIST.
EXPLODING = {
    "gan": ["model.g_optimizer.lr=1e6", "model.d_optimizer.lr=1e6"],
    "vae": ["model.optimizer.lr=1e6"],
    "diffusion": ["model.optimizer.lr=1e6"],
}


@pytest.fixture(scope="module")
def diverged_runs(fmnist, tmp_path_factory):
    """The three families at an exploding learning rate, through the real CLI (one Lightning import for all)."""
    root = tmp_path_factory.mktemp("diverged")
    jobs = {
        family: ("train", [*tiny_overrides(family), *EXPLODING[family], "budget.max_steps=8",
                           "trainer.checkpoint_every_n_steps=1", f"paths.runs_dir={root}", "name=lr"])
        for family in EXPLODING
    }  # fmt: skip
    return root / "lr", run_cli_batch(jobs, root / "logs")


@pytest.mark.parametrize("family", list(EXPLODING))
def test_an_exploding_learning_rate_ends_as_diverged_with_one_line(diverged_runs, family):
    study, results = diverged_runs
    result = results[family]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("genbench: error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    found = re.search(rf"genbench: error: {family}: loss term '\w+' .* at step (\d+);", errors[0])
    assert found, errors[0]
    step = int(found.group(1))

    run_dir = study / f"{family}-seed0"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "diverged" and record["diverged_at_step"] == step
    assert step <= record["steps"] < 8 and f"step {step}" in record["stop_reason"]
    assert f"diverged_at_step {step}" in errors[0] and f"stopped at step {record['steps']}" in errors[0]

    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.exists() == ("is kept" in errors[0])
    if last.exists():  # saved before the bad step, and only with finite weights
        model, _ = load_checkpoint(last)
        assert model.images_seen // BATCH < step
        assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    if family == "gan":  # losses of ~1e7, never NaN: caught by the loss limit
        assert "past model.loss_limit=10000" in errors[0]
