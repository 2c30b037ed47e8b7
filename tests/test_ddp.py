"""DDP on two CPU ranks (gloo), through the real CLI: `python -m genbench.train hardware=ddp_cpu ...`.

Every family trains on two ranks at once (a test-only callback, tests/ddp_probe.py, stands in for the progress bar and
writes what each rank trained). Checked: each rank's batches are its half of the global batch the one-process order
gives (``data.batch_size`` is global), the ranks draw different noise, their weights stay equal (DDP synchronises every
update, the GAN's two included), budgets and run.json count every rank's images, records and evaluation happen once
(rank 0), the VAE's two-rank test ELBO equals a one-process pass over the whole test split, and a two-rank run stopped
half-way and resumed ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import FAMILIES, REPO, finish_cli, start_cli, tiny_overrides
from ddp_probe import image_fingerprints
from test_resume import tensors

pytestmark = [pytest.mark.usefixtures("fmnist"), pytest.mark.slow]
GLOBAL_BATCH, STEPS = 16, 6  # TINY_RUN's data.subset=64: four global batches an epoch, so six steps cross an epoch
PROBE = ["callbacks.progress_bar._target_=ddp_probe.RankProbe", f"budget.max_steps={STEPS}"]
ENV = {"PYTHONPATH": f"{REPO / 'src'}:{REPO / 'tests'}"}


def ddp_command(family: str, run_dir: Path, *extra: str) -> list[str]:
    # The VAE's test ELBO is compared over the whole test split (TINY_RUN cuts it to two batches).
    tiny = [o for o in tiny_overrides(family) if "limit_test_batches" not in o]
    return [*tiny, "hardware=ddp_cpu", *PROBE, f"paths.output_dir={run_dir}", *extra]


def expected_global_batches(steps: int) -> list[list[str]]:
    """Fingerprints of global batches 0..steps-1 as one process orders them (flips off: images as transferred)."""
    from genbench.data import ImageDataModule
    from genbench.data.order import TrainOrder

    data = ImageDataModule(subset=64, batch_size=GLOBAL_BATCH, seed=0, cache_dir=str(Path(_cache()) / "data"))
    images = data.images("train")
    order = TrainOrder(len(images), GLOBAL_BATCH, seed=0, position=lambda: 0)
    per_epoch = len(order)
    batches = []
    for k in range(steps):
        epoch, j = divmod(k, per_epoch)
        indices = order.permutation(epoch)[j * GLOBAL_BATCH : (j + 1) * GLOBAL_BATCH]
        batches.append(image_fingerprints(images[indices].float().div(127.5).sub(1.0)))
    return batches


def _cache() -> str:
    import os

    return os.environ["GENBENCH_CACHE"]


def probes(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_train_distinct_shares_count_all_ranks_and_record_once(tmp_path):
    from genbench.data.order import training_seed

    runs = {family: tmp_path / family for family in FAMILIES}
    extra = {"gan": ["evaluate=true", "metrics.n_samples=200", "metrics.n_reference=200", "metrics.memorization=false",
                     "metrics.extractor=fmnist_classifier", "callbacks.sample_grid.every_n_steps=3",
                     "callbacks.fid.every_n_steps=3", "callbacks.fid.n_samples=100"],
             "vae": ["data.on_device=true"]}  # each rank slices its own share from the tensors too  # fmt: skip
    started = {f: start_cli("train", *ddp_command(f, runs[f], *extra.get(f, [])), env=ENV) for f in FAMILIES}
    # Meanwhile: a two-rank diffusion run stopped half-way (budget) then resumed, against the uninterrupted one above.
    half = start_cli("train", *ddp_command("diffusion", tmp_path / "resumed", f"budget.max_steps={STEPS // 2}"), env=ENV)
    results = {f: finish_cli(p) for f, p in started.items()}
    halfway = finish_cli(half)
    want = expected_global_batches(STEPS)
    for family, result in results.items():
        assert result.returncode == 0, f"{family}\n{result.stderr[-3000:]}"
        run_dir = runs[family]
        record = json.loads((run_dir / "run.json").read_text())
        assert record["status"] == "completed" and record["hardware"]["devices"] == 2, family
        assert record["steps"] == STEPS and record["images_seen"] == STEPS * GLOBAL_BATCH, family
        rank0, rank1 = probes(run_dir)
        assert rank0["world_size"] == 2 and len(rank0["batches"]) == len(rank1["batches"]) == STEPS, family
        for k, (mine, theirs, whole) in enumerate(zip(rank0["batches"], rank1["batches"], want)):
            assert len(mine) == len(theirs) == GLOBAL_BATCH // 2, (family, k)
            assert mine + theirs == whole, f"{family}: global batch {k} is not the one-process batch, halved by rank"
        assert rank0["seeds"] == [training_seed(0, k, 0) for k in range(STEPS)], family
        assert rank1["seeds"] == [training_seed(0, k, 1) for k in range(STEPS)], family
        differ = [name for name in rank0["weights"] if rank0["weights"][name] != rank1["weights"][name]]
        assert not differ, f"{family}: {len(differ)} tensors differ between the ranks after training, e.g. {differ[:4]}"
        # One record, written by rank 0 alone: rank 1 logs nothing of its own end, and leaves before evaluating.
        assert (result.stdout + result.stderr).count(f"{family} done:") == 1, family
        assert sorted(p.name for p in run_dir.glob("run*.json")) == ["run.json"], family
        checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert checkpoint["genbench_images_seen"] == STEPS * GLOBAL_BATCH, family  # the EMA's image count is global
    gan = runs["gan"]
    assert sorted(p.name for p in (gan / "samples").iterdir()) == ["step_000003.png", "step_000006.png"]
    fid_lines = [line for line in (results["gan"].stdout + results["gan"].stderr).splitlines() if ": fid " in line]
    assert len(fid_lines) == 2, fid_lines  # in-training FID at batches 3 and 6, by rank 0 alone
    scores = json.loads((gan / "metrics.json").read_text())
    assert scores["n_fake"] == 200 and math.isfinite(scores["fid"])
    assert sum(p.name == "metrics.json" for p in gan.rglob("*.json")) == 1

    # The VAE's two-rank test ELBO is the mean over the whole test split, each image once: what one process finds.
    vae_record = json.loads((runs["vae"] / "run.json").read_text())
    assert vae_record["test"]["test/elbo"] == pytest.approx(one_process_test_elbo(runs["vae"]), abs=1e-4)

    # Resumed on two ranks: the same command with the full budget ends exactly where the uninterrupted run ended.
    assert halfway.returncode == 0, halfway.stderr[-3000:]
    resumed = finish_cli(start_cli("train", *ddp_command("diffusion", tmp_path / "resumed"), env=ENV))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    reference, again = (tensors(r / "checkpoints" / "last.ckpt") for r in (runs["diffusion"], tmp_path / "resumed"))
    assert reference.keys() == again.keys()
    differ = [k for k in reference if not torch.equal(reference[k], again[k])]
    assert not differ, f"{len(differ)} of {len(reference)} tensors differ after a two-rank resume, e.g. {differ[:3]}"
    record = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert record["steps"] == STEPS and record["images_seen"] == STEPS * GLOBAL_BATCH


def one_process_test_elbo(run_dir: Path) -> float:
    """The same checkpoint's test ELBO from one process (Lightning's test loop on one CPU device)."""
    import pytorch_lightning as pl

    from genbench.data import ImageDataModule
    from genbench.models import load_checkpoint

    model, _ = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    data = ImageDataModule(subset=64, batch_size=GLOBAL_BATCH, seed=0, cache_dir=str(Path(_cache()) / "data"))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    return float(trainer.test(model, datamodule=data, verbose=False)[0]["test/elbo"])


def test_a_global_batch_the_ranks_cannot_share_and_spawned_ranks_are_refused_before_anything_is_loaded(tmp_path):
    from conftest import assert_contract_error

    uneven = start_cli("train", "model=vae", "hardware=ddp_cpu", "data.batch_size=15",
                       f"paths.output_dir={tmp_path / 'uneven'}")  # fmt: skip
    spawn = start_cli("train", "model=gan", "hardware=ddp_cpu", "hardware.strategy=ddp_spawn",
                      f"paths.output_dir={tmp_path / 'spawn'}")  # fmt: skip
    assert_contract_error(finish_cli(uneven), "data.batch_size=15", "2 ranks")
    assert_contract_error(finish_cli(spawn), "hardware.strategy=ddp_spawn", "hardware.strategy=ddp")
    assert not (tmp_path / "uneven").exists() and not (tmp_path / "spawn").exists()
