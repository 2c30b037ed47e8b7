"""FIDCallback inside a real (tiny) Lightning run: FID rows with wall-clock time and images seen in metrics.csv."""

from __future__ import annotations

import csv

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import genbench.noise
from genbench.metrics.callback import FIDCallback
from genbench.training.budget import Budget, BudgetCallback


class _Data(pl.LightningDataModule):
    fingerprint, channels, image_size = "callback-test", 1, 28

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.real = (torch.rand(200, 1, 28, 28, generator=g) * 255).to(torch.uint8)

    def images(self, split):
        return self.real

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.real.float()), batch_size=8)


class _Model(pl.LightningModule):
    family, num_classes = "stub", None

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))
        self.images_seen = 0

    def training_step(self, batch, batch_idx):
        self.images_seen += len(batch[0])
        return (self.scale - 1) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def sampler_settings(self, sampler):
        return None  # samples in one pass

    def sample(self, n, labels=None, generator=None, **kwargs):
        assert not kwargs, "a model that takes no sampler is passed no sampler settings"
        images = genbench.noise.randn((n, 1, 28, 28), generator, self.device).clamp(-1, 1)
        return images * self.scale.detach().clamp(0, 1)  # blank at first, noise as training goes


def test_fid_callback_logs_fid_wall_clock_and_images_seen(tmp_path):
    callback = FIDCallback(
        every_n_steps=2, n_samples=40, metrics_cfg={"extractor": "fmnist_classifier", "cache_dir": str(tmp_path / "cache")}
    )
    logger = pl.loggers.CSVLogger(tmp_path, name="run", version="")
    trainer = pl.Trainer(
        max_steps=5, callbacks=[callback], logger=logger, accelerator="cpu", enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(_Model(), datamodule=_Data())
    assert [h["step"] for h in callback.history] == [2, 4, 5]  # every 2 steps, then once at the end
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv")) if r.get("fid")]
    assert len(rows) == 3
    assert [float(r["images_seen"]) for r in rows] == [16.0, 32.0, 40.0]
    wall = [float(r["wall_clock_s"]) for r in rows]
    assert wall == sorted(wall) and wall[0] >= 0
    assert all(float(r["fid"]) >= 0 for r in rows)


class _TwoOptimizerModel(_Model):
    """Two optimizer steps per batch, as a GAN makes: Lightning's global_step runs twice as fast as batches."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        self.images_seen += len(batch[0])
        for optimizer in self.optimizers():
            optimizer.zero_grad()
            self.manual_backward((self.scale - 1) ** 2)
            optimizer.step()

    def configure_optimizers(self):
        return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]


def test_fid_callback_counts_batches_not_optimizer_steps(tmp_path):
    """Every family's curve gets its points at the same images seen, whatever its optimizer steps per batch."""
    callback = FIDCallback(
        every_n_steps=2, n_samples=40, metrics_cfg={"extractor": "fmnist_classifier", "cache_dir": str(tmp_path / "cache")}
    )
    budget = BudgetCallback(Budget(max_steps=4))
    trainer = pl.Trainer(
        max_epochs=-1, callbacks=[budget, callback], logger=False, accelerator="cpu", enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(_TwoOptimizerModel(), datamodule=_Data())
    assert trainer.global_step == 8
    assert [h["step"] for h in callback.history] == [2, 4]
    assert [h["images_seen"] for h in callback.history] == [16.0, 32.0]


def test_fid_callback_without_a_schedule_is_off():
    """conf/callbacks' default: the node is there, with neither interval, so a run measures nothing."""
    callback = FIDCallback(n_samples=10)
    assert not callback.active
    callback.on_train_end(None, None)  # would measure at the end if it were on
    assert callback.history == [] and callback.extractor is None
