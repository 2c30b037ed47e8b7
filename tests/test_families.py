"""One contract every family passes (subclassed per family, as diffusers does), plus diffusion's sampler rules.

``FamilyContract`` trains a tiny model of its family for a few steps through ``genbench.train.train`` and checks
what evaluation, sampling and reporting rely on: finite losses, ``sample`` shapes and range, determinism per
generator seed, a checkpoint that samples exactly like the model that wrote it, EMA weights that are the ones
sampling uses, and labels accepted or refused as the model's conditioning says. Each family then has to show that
it learns: its own training criterion falls on one fixed batch.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

import genbench.train
from conftest import HARDWARE_FIELDS, RUN_FIELDS, compose_train, cpu_precision, tiny_overrides, train_run
from genbench.diffusion.samplers import DDIMSampler
from genbench.errors import GenbenchError
from genbench.imageio import make_grid, read_png_text, to_uint8
from genbench.models import build_model, family_class, load_checkpoint
from genbench.noise import IndexedNoise
from genbench.sampling import sampler_settings
from genbench.training.flops import sampling_flops

STEPS = 3
SAMPLER = {"sampler": "ddim", "steps": 4}  # every family takes sampler settings; only one that takes a sampler uses them
CLASS_NAMES = [f"class{i}" for i in range(10)]


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturb_(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Add seeded noise to every parameter (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


class FixedBatch(IterableDataset):
    """The same (images, labels) batch forever: learning is judged on exactly what was trained on."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __iter__(self):
        while True:
            yield self.images, self.labels


@pytest.fixture(scope="module")
def fixed_batch(fmnist) -> tuple[torch.Tensor, torch.Tensor]:
    """64 Fashion-MNIST training images in [-1, 1] with their labels."""
    from genbench.data import ImageDataModule

    data = ImageDataModule(subset=64, cache_dir=str(fmnist))
    data.setup("fit")
    return data.images("train").float() / 127.5 - 1, data.labels("train")


class FamilyContract:
    """Subclasses set ``family`` and implement ``criterion`` (lower is better) for the learning test."""

    family: str = ""
    learn_overrides: tuple[str, ...] = ()
    learn_batches = 40
    learn_ratio = 0.8  # the criterion after training must be below this fraction of its value before
    optimizer_steps_per_batch = 1  # Lightning's max_steps counts optimizer steps

    # ------------------------------------------------------------------ one tiny run per family
    @pytest.fixture(scope="class")
    def trained(self, tmp_path_factory, fmnist) -> SimpleNamespace:
        """A STEPS-batch run, plus the in-memory model it trained and a copy of that model's initial weights."""
        built = {}

        def spy(*args, **kwargs):
            model = build_model(*args, **kwargs)
            built["model"], built["initial"] = model, copy.deepcopy(model.state_dict())
            return model

        run_dir = tmp_path_factory.mktemp(self.family) / "run"
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(genbench.train, "build_model", spy)
            record = train_run(run_dir, self.family, f"budget.max_steps={STEPS}")
        model = built["model"].eval()
        return SimpleNamespace(run_dir=run_dir, record=record, model=model, initial=built["initial"])

    # ------------------------------------------------------------------ training
    def test_trains_to_its_budget_with_finite_losses(self, trained):
        assert trained.record["status"] == "completed" and trained.record["stop_reason"] == "budget.max_steps"
        assert trained.record["family"] == self.family and trained.model.family == self.family
        with open(trained.run_dir / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        losses = [name for name in rows[0] if name.startswith("train/")]
        assert losses, "no train/* loss columns in metrics.csv"
        values = [float(row[name]) for row in rows for name in losses if row[name] != ""]
        assert len(values) >= STEPS and all(math.isfinite(v) for v in values), values

    def test_run_folder_holds_the_contract_files(self, trained):
        run_dir = trained.run_dir
        record = json.loads((run_dir / "run.json").read_text())
        assert RUN_FIELDS <= record.keys(), RUN_FIELDS - record.keys()
        assert HARDWARE_FIELDS <= record["hardware"].keys()
        assert record["family"] == self.family and record["status"] == "completed"
        assert record["steps"] == STEPS and record["images_seen"] == STEPS * 16 and record["seed"] == 0
        # the trained parameters, counted once: the EMA copy (frozen) and aliased training nets are not extra
        assert record["params"] == sum(p.numel() for p in trained.model.parameters() if p.requires_grad)
        assert record["hardware"]["accelerator"] == "cpu" and record["hardware"]["precision"] == cpu_precision()
        assert record["train_seconds"] > 0 and record["img_per_s"] > 0 and record["peak_mem_mb"] > 0
        assert record["started"] <= record["finished"]
        assert record["git_commit"] is None or len(record["git_commit"]) >= 40

        config = OmegaConf.load(run_dir / "config.yaml")
        assert config.model.family == self.family and config.budget.max_steps == STEPS
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "metrics.csv").is_file()
        pngs = sorted((run_dir / "samples").glob("*.png"))
        assert pngs and pngs[-1].name == f"step_{STEPS:06d}.png"
        for png in pngs:
            text = read_png_text(png)
            assert text["AI-generated"] == "true" and text["genbench:family"] == self.family, text
            assert text["genbench:seed"] == "0" and text["genbench:checkpoint_sha256"], text

    def test_counting_sampling_flops_leaves_the_model_alone(self, trained):
        """(run.json's training FLOPs of every family: tests/test_evaluate.py)"""
        model = trained.model
        settings = sampler_settings(model, SAMPLER)
        rng, weights = torch.get_rng_state(), copy.deepcopy(model.state_dict())
        flops = sampling_flops(model, settings)
        assert flops > 0 and torch.equal(rng, torch.get_rng_state())
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
        if model.takes_sampler:  # guidance batches both branches into each network call
            guided = sampling_flops(model, sampler_settings(model, {**SAMPLER, "guidance_scale": 2.0}))
            assert flops < guided <= 2 * flops

    # ------------------------------------------------------------------ sampling interface
    def test_sample_shape_and_range(self, trained):
        images = trained.model.sample(5, generator=generator(0), **SAMPLER)
        assert images.shape == (5, 1, 28, 28) and images.dtype == torch.float32
        assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1

    def test_sample_is_deterministic_per_generator_seed(self, trained):
        first = trained.model.sample(4, generator=generator(7), **SAMPLER)
        again = trained.model.sample(4, generator=generator(7), **SAMPLER)
        other = trained.model.sample(4, generator=generator(8), **SAMPLER)
        assert torch.equal(first, again)
        assert not torch.equal(first, other)

    def test_checkpoint_round_trip_samples_identically(self, trained):
        loaded, cfg = load_checkpoint(trained.run_dir / "checkpoints" / "last.ckpt")
        assert loaded.family == self.family and cfg.model.family == self.family and not loaded.training
        trained_state, loaded_state = trained.model.state_dict(), loaded.state_dict()
        assert trained_state.keys() == loaded_state.keys()
        assert all(torch.equal(trained_state[k], loaded_state[k]) for k in trained_state)
        assert loaded.images_seen == trained.record["images_seen"]
        assert torch.equal(
            trained.model.sample(6, generator=generator(3), **SAMPLER), loaded.sample(6, generator=generator(3), **SAMPLER)
        )

    def test_final_sample_grid_is_reproduced_by_the_checkpoint(self, trained):
        """samples/step_N.png is the run's seed (cell i: the noise stream of (seed, i)) and sampler applied to the
        checkpoint, pixel for pixel."""
        loaded, cfg = load_checkpoint(trained.run_dir / "checkpoints" / "last.ckpt")
        n = cfg.callbacks.sample_grid.n
        if loaded.num_classes:  # the grid rounds up to whole rows of one column per class
            n = -(-n // loaded.num_classes) * loaded.num_classes
        labels = torch.arange(n) % loaded.num_classes if loaded.num_classes else None
        images = loaded.sample(n, labels=labels, generator=IndexedNoise.range(cfg.seed, 0, n), sampler=cfg.sampler.name,
                               steps=cfg.sampler.steps, eta=cfg.sampler.eta,
                               guidance_scale=cfg.sampler.guidance_scale)  # fmt: skip
        expected = make_grid(to_uint8(images), nrow=loaded.num_classes or 8).permute(1, 2, 0).numpy()
        saved = np.asarray(Image.open(trained.run_dir / "samples" / f"step_{STEPS:06d}.png").convert("RGB"))
        np.testing.assert_array_equal(saved, expected)

    def test_ema_weights_moved_and_are_the_ones_that_sample(self, trained):
        model = trained.model
        raw = dict(model.sampling_network().named_parameters())
        ema = dict(model.ema.module.named_parameters())
        assert raw.keys() == ema.keys()
        assert any(not torch.equal(raw[k], ema[k]) for k in raw), "EMA weights equal the raw weights"
        prefix = next(k for k, v in model.named_modules() if v is model.sampling_network())
        initial = {k: trained.initial[f"{prefix}.{k}"] for k in raw}
        assert any(not torch.equal(initial[k], ema[k]) for k in raw), "EMA weights never left their initial values"

        reference = model.sample(4, generator=generator(0), **SAMPLER)
        copy_raw, copy_ema = copy.deepcopy(model), copy.deepcopy(model)
        perturb_(copy_raw.sampling_network())
        perturb_(copy_ema.ema.module)
        assert torch.equal(copy_raw.sample(4, generator=generator(0), **SAMPLER), reference), "sampling used raw weights"
        assert not torch.equal(copy_ema.sample(4, generator=generator(0), **SAMPLER), reference)

    def test_declared_capabilities_are_kept(self, trained):
        """What the family's class declares (``takes_sampler``, ``step_sampler``, ``interpolates``, ``encodes_images``)
        it does, through the calls each promises; the class the config names is the one read without a model."""
        model = trained.model
        assert family_class(self.family) is type(model)
        # and nothing undeclared: a method of a capability without its flag would be one no caller ever uses
        promised = {"takes_sampler": "sampler_nfe", "interpolates": "interpolate", "encodes_images": "encode"}
        assert {flag: getattr(model, flag) for flag in promised} == {f: hasattr(model, m) for f, m in promised.items()}
        settings = model.sampler_settings(SAMPLER if model.takes_sampler else None)
        if model.takes_sampler:
            assert settings["steps"] == 4 and model.sampler_nfe(**settings) >= 4
            assert callable(model.compiled_sampling) and callable(model.warm_up_sampling)
            if model.has_sampler_steps():  # the step-count figure's sampler takes any step count it draws
                assert all(model.sampler_settings({**model.step_sampler, "steps": k})["steps"] == k for k in (1, 2))
        else:
            assert settings is None and not model.has_sampler_steps()
        label = None if model.num_classes is None else 3
        images = torch.rand(2, *model.image_shape, generator=generator(0)) * 2 - 1
        if model.encodes_images:
            codes = model.encode(images, label)
            assert codes.shape[0] == 2 and torch.isfinite(codes).all() and torch.equal(codes, model.encode(images, label))
        if model.interpolates:
            path = model.interpolate(images[0], images[1], 5, labels=label)
            assert path.shape == (5, *model.image_shape) and path.min() >= -1 and path.max() <= 1

    def test_labels_follow_the_models_conditioning(self, trained):
        model = trained.model
        if model.num_classes is None:
            with pytest.raises(GenbenchError, match="unconditional"):
                model.sample(2, labels=[0, 1], generator=generator(0), **SAMPLER)
            return
        k = model.num_classes
        images = model.sample(3, labels=[0, 4, k - 1], generator=generator(0), **SAMPLER)
        assert images.shape == (3, 1, 28, 28)
        assert model.sample(3, labels=2, generator=generator(0), **SAMPLER).shape == (3, 1, 28, 28)
        for bad in ([0, 1, k], [-1, 0, 1]):
            with pytest.raises(GenbenchError, match=rf"\[0, {k - 1}\]"):
                model.sample(3, labels=bad, generator=generator(0), **SAMPLER)
        with pytest.raises(GenbenchError, match="labels for 3 samples"):
            model.sample(3, labels=[0, 1], generator=generator(0), **SAMPLER)

    # ------------------------------------------------------------------ learning
    def criterion(self, model, images: torch.Tensor, labels: torch.Tensor) -> float:
        raise NotImplementedError

    def test_learns_a_fixed_batch(self, fixed_batch, tmp_path):
        images, labels = fixed_batch
        cfg = compose_train(tmp_path / "run", *tiny_overrides(self.family), *self.learn_overrides)
        pl.seed_everything(0, verbose=False)
        model = build_model(cfg.model, images.shape[1:], 10, CLASS_NAMES)
        before = self.criterion(model.eval(), images, labels)
        optimizer_steps = self.learn_batches * self.optimizer_steps_per_batch
        trainer = pl.Trainer(max_steps=optimizer_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(model.train(), DataLoader(FixedBatch(images, labels), batch_size=None))
        after = self.criterion(model.eval(), images, labels)
        assert math.isfinite(after) and after < self.learn_ratio * before, (before, after)


class TestGAN(FamilyContract):
    family = "gan"
    # Fast learning rates and a short EMA (a half-life of 100 images), so 60 batches visibly move the generator.
    learn_overrides = ("model.g_optimizer.lr=2e-3", "model.d_optimizer.lr=2e-3", "model.ema_halflife_kimg=0.1")
    learn_batches = 60
    learn_ratio = 0.85
    optimizer_steps_per_batch = 2  # the discriminator's and the generator's

    def criterion(self, model, images, labels):
        """RMS distance between the mean sampled image and the batch's mean image (mostly dark background)."""
        samples = model.sample(64, generator=generator(0))
        return (samples.mean(0) - images.mean(0)).pow(2).mean().sqrt().item()


class TestVAE(FamilyContract):
    family = "vae"
    learn_overrides = ("model.kl_warmup_steps=0",)

    def criterion(self, model, images, labels):
        """The negative ELBO in nats per image, with the same posterior noise before and after."""
        torch.manual_seed(0)
        with torch.no_grad():
            nll, kl = model.negative_elbo(model.net, images, labels)
        return (nll + kl).mean().item()


class TestDiffusion(FamilyContract):
    family = "diffusion"
    learn_batches = 30

    def criterion(self, model, images, labels):
        """Denoising MSE at fixed timesteps spread over the schedule and fixed noise."""
        g = generator(0)
        t = torch.linspace(50, 950, len(images)).long()
        noise = torch.randn(images.shape, generator=g)
        with torch.no_grad():
            out = model.net(model.path.add_noise(images, noise, t), t, labels)
        return F.mse_loss(out, model.path.training_target(images, noise, t)).item()

    # ------------------------------------------------------------------ samplers
    @pytest.fixture
    def model(self, tmp_path):
        """An untrained conditional tiny diffusion model whose EMA net has non-zero, label-dependent output."""
        cfg = compose_train(tmp_path / "run", *tiny_overrides("diffusion"))
        torch.manual_seed(0)
        model = build_model(cfg.model, (1, 28, 28), 10, CLASS_NAMES).eval()
        perturb_(model.ema.module, scale=0.02)
        return model

    @staticmethod
    def count_calls(net: torch.nn.Module) -> tuple[list[int], object]:
        batch_sizes: list[int] = []
        handle = net.register_forward_hook(lambda module, args, out: batch_sizes.append(args[0].shape[0]))
        return batch_sizes, handle

    def test_ddim_eta0_is_deterministic_given_the_generator(self, model):
        kwargs = dict(labels=[1, 2, 3], sampler="ddim", steps=6, eta=0.0)
        first = model.sample(3, generator=generator(5), **kwargs)
        assert torch.equal(first, model.sample(3, generator=generator(5), **kwargs))
        assert not torch.equal(first, model.sample(3, generator=generator(6), **kwargs))
        # eta = 1 draws fresh noise at every step, so the same seed gives another sample than eta = 0
        assert not torch.equal(first, model.sample(3, generator=generator(5), **{**kwargs, "eta": 1.0}))

    @pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
    @pytest.mark.parametrize("guidance_scale", [0.0, 1.0, 3.0])
    def test_sampler_makes_exactly_steps_calls_on_the_ema_net(self, model, sampler, guidance_scale):
        ema_calls, ema_hook = self.count_calls(model.ema.module)
        raw_calls, raw_hook = self.count_calls(model.net)
        try:
            model.sample(3, labels=[0, 1, 2], generator=generator(0), sampler=sampler, steps=7,
                         guidance_scale=guidance_scale)  # fmt: skip
        finally:
            ema_hook.remove()
            raw_hook.remove()
        assert raw_calls == []
        # guidance 0 and 1 run one branch; any other scale batches conditional and unconditional together
        assert ema_calls == [3 if guidance_scale in (0, 1) else 6] * 7

    def test_guidance_0_is_the_null_label_and_1_the_condition(self, model):
        net, steps, n = model.ema.module, 5, 3
        labels = torch.tensor([0, 4, 9])

        def reference(use_labels: torch.Tensor) -> torch.Tensor:
            noise = model.randn(n, *model.image_shape, generator=generator(0))
            return DDIMSampler(steps)(lambda x, t: net(x, t, use_labels), model.path, noise)

        null = torch.full((n,), model.num_classes)
        unconditional = model.sample(n, labels=labels, generator=generator(0), steps=steps, guidance_scale=0.0)
        conditional = model.sample(n, labels=labels, generator=generator(0), steps=steps, guidance_scale=1.0)
        assert torch.equal(unconditional, reference(null))
        assert torch.equal(conditional, reference(labels))
        assert not torch.equal(unconditional, conditional)
        # with guidance 0 the labels have no say at all
        other = model.sample(n, labels=[5, 5, 5], generator=generator(0), steps=steps, guidance_scale=0.0)
        assert torch.equal(unconditional, other)
