"""Checkpoints a run can trust, and training that does not depend on things that should not matter.

Safe checkpoints (no non-finite weights saved, a damaged last.ckpt falls back to previous.ckpt, a completed record
is never rewritten on such an error), keys independent of hardware.compile, EMA in images (equal averaging at any
batch size), data.subset the same images for every seed, the training order a pure function of its position, and
a progress bar that ends at the budget.
"""

from __future__ import annotations

import io
import logging
import math
import random
import re
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import rich
import torch
from torch import nn

from conftest import compose_train, tiny_overrides, train_run
from genbench.data import ImageDataModule
from genbench.data.order import DeviceBatches, TrainOrder
from genbench.errors import GenbenchError
from genbench.models import Diverged, GenerativeModule, build_model, load_checkpoint
from genbench.models.ema import ImageEMA, ema_beta
from genbench.models.resume import collect_rng_states, restore_rng_states
from genbench.training.record import read_json

BATCH = 16  # conftest's TINY_RUN batch size
CLASSES = [str(i) for i in range(10)]


def checkpoints(run_dir):
    return run_dir / "checkpoints"


# ---------------------------------------------------------------------- safe checkpoints
@pytest.mark.usefixtures("fmnist")
def test_non_finite_weights_are_never_saved_and_the_run_ends_diverged(tmp_path, monkeypatch):
    """NaN in the EMA weights at step 3 (losses stay finite): the step-4 checkpoint is refused, step 2's stays."""
    real_end_step = GenerativeModule.end_step

    def poison_at_step_3(self, batch):
        real_end_step(self, batch)
        if self.images_seen == 3 * BATCH:
            with torch.no_grad():
                next(self.ema.module.parameters()).fill_(math.nan)

    monkeypatch.setattr(GenerativeModule, "end_step", poison_at_step_3)
    run_dir = tmp_path / "run"
    with pytest.raises(Diverged, match="weight tensors became non-finite"):
        train_run(run_dir, "vae", "budget.max_steps=6", "trainer.checkpoint_every_n_steps=2",
                  "trainer.log_every_n_steps=25")  # fmt: skip
    record = read_json(run_dir / "run.json")
    assert record["status"] == "diverged" and "non-finite" in record["stop_reason"] and record["steps"] == 4
    model, _ = load_checkpoint(checkpoints(run_dir) / "last.ckpt")
    assert model.images_seen == 2 * BATCH
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())

    monkeypatch.setattr(GenerativeModule, "end_step", real_end_step)  # the same command goes on from step 2
    record = train_run(run_dir, "vae", "budget.max_steps=6", "trainer.checkpoint_every_n_steps=2",
                       "trainer.log_every_n_steps=25")  # fmt: skip
    assert record["status"] == "completed" and record["steps"] == 6


@pytest.mark.usefixtures("fmnist")
def test_a_damaged_last_ckpt_falls_back_to_previous_and_never_rewrites_the_record(tmp_path, caplog):
    run_dir, every = tmp_path / "run", "trainer.checkpoint_every_n_steps=2"
    train_run(run_dir, "vae", "budget.max_steps=4", every)
    record_bytes = (run_dir / "run.json").read_bytes()
    last, previous = checkpoints(run_dir) / "last.ckpt", checkpoints(run_dir) / "previous.ckpt"
    assert previous.is_file()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a half-written file

    with pytest.raises(GenbenchError, match="not a readable checkpoint"):  # sample/evaluate keep their clear error
        load_checkpoint(last)
    done = train_run(run_dir, "vae", "budget.max_steps=4", every)  # completed: nothing to do, nothing rewritten
    assert done["status"] == "completed" and (run_dir / "run.json").read_bytes() == record_bytes

    with caplog.at_level(logging.WARNING):
        grown = train_run(run_dir, "vae", "budget.max_steps=6", every)
    assert any("cannot be read" in r.getMessage() and "previous.ckpt" in r.getMessage() for r in caplog.records)
    assert grown["status"] == "completed" and (grown["steps"], grown["images_seen"]) == (6, 6 * BATCH)

    record_bytes = (run_dir / "run.json").read_bytes()
    for path in (last, previous):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(GenbenchError, match="no readable checkpoint"):
        train_run(run_dir, "vae", "budget.max_steps=8", every)
    assert (run_dir / "run.json").read_bytes() == record_bytes


def test_a_checkpoint_with_non_finite_weights_is_not_resumed_from(tmp_path, caplog):
    """Such files come from before genbench refused to save them; resume=auto must not keep resuming them."""
    from genbench.training.checkpoint_io import readable_checkpoint

    assert readable_checkpoint(tmp_path) is None
    torch.save({"state_dict": {"w": torch.tensor([1.0, math.nan])}, "loops": {}}, tmp_path / "last.ckpt")
    with pytest.raises(GenbenchError, match="non-finite"):
        readable_checkpoint(tmp_path)
    torch.save({"state_dict": {"w": torch.ones(2)}, "loops": {}}, tmp_path / "previous.ckpt")
    with caplog.at_level(logging.WARNING):
        assert readable_checkpoint(tmp_path) == tmp_path / "previous.ckpt"
    assert "non-finite" in caplog.text and "previous.ckpt" in caplog.text


# ---------------------------------------------------------------------- hardware.compile
@pytest.mark.parametrize("family", ["vae", "gan"])
def test_checkpoint_keys_do_not_depend_on_hardware_compile(tmp_path, family):
    """torch.compile's wrapper is kept out of the module tree: a compiled model's state_dict loads into a plain
    one and back (strict), without running the compiled graph."""
    models = {}
    for compiled in (False, True):
        cfg = compose_train(tmp_path / "run", *tiny_overrides(family))
        models[compiled] = build_model(cfg.model, (1, 28, 28), 10, CLASSES)
        models[compiled].configure_speed(compile=compiled)
    plain, compiled = models[False], models[True]
    assert plain.state_dict().keys() == compiled.state_dict().keys()
    assert not any("_orig_mod" in k or k.startswith("train_") for k in compiled.state_dict())
    trained_view = compiled.train_net if family == "vae" else compiled.train_generator
    assert isinstance(trained_view, torch._dynamo.eval_frame.OptimizedModule)
    plain.load_state_dict(compiled.state_dict())
    compiled.load_state_dict(plain.state_dict())


# ---------------------------------------------------------------------- EMA in images
def ema_of_a_switch(batch: int, images: int, halflife_kimg: float, rampup: float | None) -> float:
    """EMA of a parameter that is 1 for the first half of ``images`` and 0 after: the weight the EMA puts on
    the first half of training."""
    net = nn.Linear(1, 1, bias=False)
    ema = ImageEMA(net, halflife_kimg, rampup)
    for seen in range(0, images, batch):
        net.weight.data.fill_(1.0 if seen < images // 2 else 0.0)
        ema.step(net, batch, seen)
    return ema.module.weight.item()


@pytest.mark.parametrize("rampup", [None, 0.077])
def test_ema_averages_alike_at_batch_64_and_256(rampup):
    """Same images seen, same averaging: the weight on the first half of 51,200 images at batch 64 and 256."""
    halflife_kimg = 20.0
    w64, w256 = (ema_of_a_switch(b, 51_200, halflife_kimg, rampup) for b in (64, 256))
    if rampup is None:  # exactly 0.5 ** (25,600 / 20,000) either way
        assert w64 == pytest.approx(0.5**1.28, rel=1e-5) and w256 == pytest.approx(0.5**1.28, rel=1e-5)  # float32
    else:  # ramped half-life 7.7% of images seen: ~(1/2) ** (ln 2 / 0.077) = 0.2% left on the first half
        assert w64 == pytest.approx(w256, rel=0.05) and 0.001 < w64 < 0.004
    # a per-update decay of 0.999 would differ about 4x in horizon: 0.999 ** 400 = 0.67 against 0.999 ** 100 = 0.90
    assert ema_beta(64, 10**9, halflife_kimg, rampup) ** 4 == pytest.approx(ema_beta(256, 10**9, halflife_kimg, rampup))


# ---------------------------------------------------------------------- data
def test_a_subset_is_the_same_images_for_every_seed(fmnist):
    modules = [ImageDataModule(cache_dir=str(fmnist), seed=s, subset=200, val_size=100) for s in (0, 1)]
    first, second = modules
    assert torch.equal(first.images("train"), second.images("train"))
    assert first.split_fingerprint("train") == second.split_fingerprint("train")
    assert not torch.equal(first.images("val"), second.images("val"))
    assert first.split_fingerprint("val") != second.split_fingerprint("val")
    everything = ImageDataModule(cache_dir=str(fmnist), val_size=0)
    assert torch.equal(first.images("train"), everything.images("train")[:200])
    source = everything.images("train")
    val = {bytes(im.numpy()) for im in first.images("val")}
    assert not val & {bytes(im.numpy()) for im in source[:200]}, "validation images overlap the subset"
    with pytest.raises(GenbenchError, match="data.subset=59950"):
        ImageDataModule(cache_dir=str(fmnist), subset=59950, val_size=100).setup()


def test_the_training_order_is_a_function_of_seed_epoch_and_batch_index():
    position = SimpleNamespace(value=0)
    order = TrainOrder(50, 8, seed=3, position=lambda: position.value)
    batches = []
    for _ in range(3):  # three epochs of six batches, each started where training stands
        for indices in order:
            batches.append(indices)
            position.value += 1
    assert len(order) == 6 and all(len(b) == 8 for b in batches)
    assert sorted(torch.cat(batches[:6]).tolist()) == sorted(set(torch.cat(batches[:6]).tolist()))  # no repeats
    assert not torch.equal(torch.cat(batches[:6]), torch.cat(batches[6:12]))  # a new order each epoch
    for start in (0, 4, 6, 11):  # a resumed run goes on with exactly the batches the first one would have seen
        position.value = start
        resumed = list(order)
        assert all(torch.equal(a, b) for a, b in zip(resumed, batches[start:])), start
        assert len(resumed) == 6 - start % 6
    position.value = 7
    on_device = list(DeviceBatches((torch.arange(50) * 10,), order))
    assert all(torch.equal(batch[0], indices * 10) for batch, indices in zip(on_device, batches[7:12]))
    two_ranks = [list(TrainOrder(50, 8, seed=3, position=lambda: 0, rank=r, world_size=2)) for r in (0, 1)]
    assert torch.equal(torch.cat([two_ranks[0][0], two_ranks[1][0]]), batches[0])  # batch_size is global: ranks share it


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(5)
    states = collect_rng_states()
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.save({"genbench_rng": states}, tmp_path / "rng.pt")
    restore_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True)["genbench_rng"])
    again = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


# ---------------------------------------------------------------------- progress bar
def test_the_progress_bar_ends_at_the_budget(tmp_path, fmnist):
    """30 batches of 4 per epoch: the last epoch starts at batch 28, and the bar must still end at 30/30."""
    from genbench.training.budget import Budget, BudgetCallback
    from genbench.training.callbacks import BudgetProgressBar

    cfg = compose_train(tmp_path / "run", *tiny_overrides("vae"))
    data = ImageDataModule(cache_dir=str(fmnist), subset=64, batch_size=16)
    data.setup()
    model = build_model(cfg.model, data.image_shape, data.num_classes, data.class_names)
    screen = io.StringIO()  # a log file, not a terminal: rich draws the bar once, as it stops
    budget = BudgetCallback(Budget(max_steps=30))
    bar = BudgetProgressBar(refresh_rate=1, console_kwargs={"file": screen, "width": 120})
    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[budget, bar])  # fmt: skip
    try:
        trainer.fit(model, datamodule=data)
    finally:
        rich.reconfigure()  # the bar reconfigured rich's global console onto the StringIO
    assert budget.steps == 30
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.completed, task.total, task.fields["unit"]) == (30, 30, "batches")  # one bar for the run
    (line,) = [line for line in screen.getvalue().splitlines() if "batches" in line]
    assert "30/30 batches" in line and re.findall(r"\d+/\d+", line) == ["30/30"], line  # not the epoch's 2/4
