"""Protocol ids, per-protocol score files, per-image noise at every call site, and the model's sampler capability.

Everything here runs in-process on tiny random-init models (no training, no data): a few seconds in all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import compose_train, tiny_overrides
from genbench.errors import GenbenchError
from genbench.metrics import MetricsConfig, model_sampler, sample_images
from genbench.metrics.protocol import legacy_protocol, make_protocol, protocol_fields, protocol_id, record_protocol
from genbench.metrics.store import read_scores, write_score
from genbench.noise import IndexedNoise

CLASSES = [f"class{i}" for i in range(10)]
CPU = torch.device("cpu")


def tiny_model(family: str, conditional: bool = True, *overrides: str):
    from genbench.models import build_model

    cfg = compose_train(Path("/nonexistent/run"), *tiny_overrides(family), *overrides)
    return build_model(cfg.model, (1, 28, 28), 10 if conditional else None, CLASSES if conditional else None).eval()


@pytest.fixture(scope="module")
def models() -> dict:
    models = {family: tiny_model(family) for family in ("gan", "vae", "diffusion")}
    # A width-8 DCGAN at its init draws near-constant images (two uint8 levels); wider weights spread them over
    # the range, so comparing uint8 images compares something.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in models["gan"].ema.module.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return models


# ------------------------------------------------------------------------------------------ per-image noise
SAMPLERS = {
    "gan": ("gan", {"name": "ddim", "steps": 4}),  # the train config's sampler group: nothing of it applies
    "vae": ("vae", {"name": "ddim", "steps": 4}),
    "diffusion-ddim": ("diffusion", {"name": "ddim", "steps": 4, "eta": 0.0}),
    "diffusion-ddim-eta1": ("diffusion", {"name": "ddim", "steps": 4, "eta": 1.0}),
    "diffusion-ddpm": ("diffusion", {"name": "ddpm", "steps": 4}),  # fresh noise at every step
}


@pytest.mark.parametrize("case", SAMPLERS)
def test_image_i_is_the_same_at_batch_50_and_250(models, case):
    family, sampler = SAMPLERS[case]
    model = models[family]
    settings = model_sampler(model, sampler)
    small, _ = sample_images(model, 250, 50, 7, settings, CPU)
    large, _ = sample_images(model, 250, 250, 7, settings, CPU)
    assert small.dtype == torch.uint8 and small.shape == (250, 1, 28, 28)
    assert torch.equal(small, large)
    assert len({bytes(image.numpy()) for image in small}) == 250  # 250 different images, not one repeated
    other_seed, _ = sample_images(model, 250, 250, 8, settings, CPU)
    assert not torch.equal(other_seed, large)


def test_one_generator_per_batch_would_depend_on_the_batch_size(models):
    """The check above can fail: drawing each batch from one generator (the old way) gives other images, here
    because a sampler's initial and per-step noise interleave differently when the batch is split."""
    model, settings = models["diffusion"], {"sampler": "ddpm", "steps": 3}
    labels = torch.arange(100) % 10
    generator = torch.Generator().manual_seed(7)
    one_batch = model.sample(100, labels=labels, generator=generator, **settings)
    generator = torch.Generator().manual_seed(7)
    two_batches = torch.cat([model.sample(50, labels=labels[i : i + 50], generator=generator, **settings) for i in (0, 50)])
    assert not torch.equal(one_batch, two_batches)


def test_sample_grid_callback_uses_per_image_noise(models, tmp_path):
    import numpy as np
    from PIL import Image

    from genbench.imageio import make_grid, to_uint8
    from genbench.training.budget import Budget, BudgetCallback
    from genbench.training.callbacks import SampleGridCallback

    model = models["diffusion"]
    callback = SampleGridCallback(0, 10, run_dir=tmp_path, run_seed=3, budget=BudgetCallback(Budget(max_steps=1)),
                                  sampler={"sampler": "ddpm", "steps": 3})
    callback.setup(None, model, "fit")
    path = callback.save(model)
    expected = model.sample(10, labels=torch.arange(10), generator=IndexedNoise.range(3, 0, 10), sampler="ddpm", steps=3)
    grid = make_grid(to_uint8(expected), nrow=10)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid.permute(1, 2, 0).numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_noise_is_the_same_on_cpu_and_gpu(models):
    cuda = torch.device("cuda")
    cpu_noise = IndexedNoise.range(0, 100, 50, CPU).randn(50, 1, 28, 28)
    gpu_noise = IndexedNoise.range(0, 100, 50, cuda).randn(50, 1, 28, 28)
    assert gpu_noise.device.type == "cuda" and torch.equal(cpu_noise, gpu_noise.cpu())
    model = models["gan"]
    settings = model_sampler(model, None)
    on_cpu, _ = sample_images(model, 100, 100, 0, settings, CPU)
    on_gpu, _ = sample_images(model.to(cuda), 100, 30, 0, settings, cuda)
    model.to(CPU)
    diff = (on_cpu.int() - on_gpu.int()).abs()
    assert diff.max() <= 2 and (diff > 0).float().mean() < 0.01  # same noise; only kernels' float rounding differs


# ------------------------------------------------------------------------------------------ the model's capability
@pytest.mark.parametrize("family", ["gan", "vae"])
def test_one_pass_families_take_no_sampler_and_no_guidance(models, family):
    model = models[family]
    assert model.sampler_settings({"sampler": "ddim", "steps": 50, "guidance_scale": 1.0}) is None
    assert model.sampler_settings(None) is None
    with pytest.raises(GenbenchError, match="guidance_scale=3"):
        model.sampler_settings({"sampler": "ddim", "guidance_scale": 3})


def test_diffusion_settings_are_completed_and_checked(models):
    model = models["diffusion"]
    settings = model.sampler_settings({"sampler": "ddim", "steps": "20", "guidance_scale": 3})
    assert settings["sampler"] == "ddim" and settings["steps"] == 20 and settings["guidance_scale"] == 3.0
    assert "eta" in settings  # complete: the protocol id does not depend on which defaults a config spelled out
    for bad, words in [({"steps": "abc"}, "abc"), ({"sampler": "bogus"}, "bogus"), ({"steps": 5000}, "5000"),
                       ({"nfe": 3}, "nfe")]:  # fmt: skip
        with pytest.raises(GenbenchError, match=words):
            model.sampler_settings(bad)
    unconditional = tiny_model("diffusion", False)
    assert unconditional.sampler_settings({"guidance_scale": 1})["guidance_scale"] == 1.0
    with pytest.raises(GenbenchError, match="unconditional"):
        unconditional.sampler_settings({"guidance_scale": 3})


def test_sampling_precision_is_checked_and_bf16_is_a_protocol_of_its_own():
    model = tiny_model("diffusion")
    with torch.no_grad():  # a zero-initialised output layer would draw the same images in any precision
        for p in model.ema.module.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    base = {"sampler": "ddim", "steps": 4, "eta": 0.0}
    fp32 = model.sampler_settings({**base, "precision": "32-true"})
    assert "precision" not in fp32 and fp32 == model.sampler_settings(base)  # fp32 protocols keep their ids
    bf16 = model.sampler_settings({**base, "precision": "bf16-mixed"})
    assert bf16["precision"] == "bf16-mixed"
    with pytest.raises(GenbenchError, match="sampler.precision=fp8"):
        model.sampler_settings({**base, "precision": "fp8"})
    ids = {name: protocol_id(_fields(sampler=settings)) for name, settings in (("fp32", fp32), ("bf16", bf16))}
    assert ids["fp32"] != ids["bf16"] and ids["bf16"].startswith("fmnist_classifier-n1000-ddim4-bf16-")
    a, _ = sample_images(model, 40, 20, 3, fp32, CPU)
    b, _ = sample_images(model, 40, 20, 3, bf16, CPU)
    difference = (a.float() - b.float()).abs()
    assert 0 < difference.mean() < 4  # bf16 rounding moves pixels a little; the samples stay the same images
    again, _ = sample_images(model, 40, 40, 3, bf16, CPU)
    assert torch.equal(again, b)  # per-image noise: still independent of the batch


def _moved(model):
    """``model`` with its EMA weights nudged off their init (a zero-initialised output layer draws one image)."""
    with torch.no_grad():
        for p in model.ema.module.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    return model


def test_compiled_sampling_draws_the_eager_images_and_follows_a_moving_ema():
    from torch._dynamo.utils import counters

    model = _moved(tiny_model("diffusion"))
    settings = model.sampler_settings({"sampler": "ddim", "steps": 3, "eta": 0.0})
    auto = MetricsConfig.from_cfg({"n_samples": 1000})  # auto: always on CUDA, on a CPU from 5,000 images
    assert auto.compile_sampling() is torch.cuda.is_available() and auto.compile_sampling(5000)
    assert MetricsConfig.from_cfg({"compile": True}).compile_sampling(10)
    assert not MetricsConfig.from_cfg({"compile": False}).compile_sampling(10**6)
    graphs = counters["stats"]["unique_graphs"]
    eager, _ = sample_images(model, 10, 4, 5, settings, CPU)
    timings = {}
    compiled, _ = sample_images(model, 10, 4, 5, settings, CPU, compile=True, timings=timings)  # batches 4, 4, 2 (+2)
    assert compiled.shape == eager.shape and (compiled.int() - eager.int()).abs().max() <= 1
    # one shape, one graph, compiled by the warm-up call (timed apart): neither sampling nor the last batch recompiled
    assert counters["stats"]["unique_graphs"] == graphs + 1 and timings["compile_seconds"] > 0
    with torch.no_grad():  # in-training FID samples an EMA that has moved since the last call
        for p in model.ema.module.parameters():
            p.mul_(0.9)
    moved_eager, _ = sample_images(model, 10, 4, 5, settings, CPU)
    moved, _ = sample_images(model, 10, 4, 5, settings, CPU, compile=True)
    assert (moved.int() - moved_eager.int()).abs().max() <= 1 and not torch.equal(moved, compiled)
    assert counters["stats"]["unique_graphs"] == graphs + 1 and "_sampling_net" not in model.__dict__


def test_sampling_batch_auto_is_the_fastest_measured_for_the_precision():
    cpu = MetricsConfig.from_cfg({"device": "cpu"})  # metrics.batch_size=auto, the default
    assert cpu.batch_size == "auto" and cpu.sampling_batch() == cpu.sampling_batch(None) == 64
    model = tiny_model("diffusion")
    for precision, batch in (("32-true", 64), ("bf16-mixed", 128)):
        settings = model.sampler_settings({"sampler": "dpmpp_2m", "steps": 3, "precision": precision})
        assert cpu.sampling_batch(settings) == batch
        assert MetricsConfig.from_cfg({"batch_size": 7}).sampling_batch(settings) == 7  # a number is kept
    assert MetricsConfig.from_cfg({"batch_size": 256}).sampling_batch() == 256  # typed, as Hydra reads an int
    if torch.cuda.is_available():
        assert MetricsConfig.from_cfg({"device": "cuda"}).sampling_batch() == 512


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_bf16_sampling_on_gpu_draws_the_eager_images():
    cuda = torch.device("cuda")
    model = _moved(tiny_model("diffusion")).to(cuda)
    assert MetricsConfig().compile_sampling()  # metrics.compile=auto compiles on CUDA
    for precision in ("32-true", "bf16-mixed"):
        settings = model.sampler_settings({"sampler": "dpmpp_2m", "steps": 5, "precision": precision})
        eager, _ = sample_images(model, 100, 64, 0, settings, cuda)
        compiled, _ = sample_images(model, 100, 64, 0, settings, cuda, compile=True)
        difference = (eager.int() - compiled.int()).abs()
        assert compiled.is_cuda is False and difference.float().mean() < 0.05 and difference.max() <= 4, precision


# ------------------------------------------------------------------------------------------ protocol ids
def _fields(**changes) -> dict:
    config = MetricsConfig(extractor="fmnist_classifier", n_samples=1000)
    base = dict(config=config, extractor_name="fmnist_classifier", extractor_sha256="ab" * 32,
                reference="fashion_mnist-k-test/test@28px", n_real=10000, n_fake=1000,
                sampler={"sampler": "ddim", "steps": 20, "eta": 0.0, "guidance_scale": 1.0}, has_isc=True,
                memorization=True)  # fmt: skip
    return protocol_fields(**(base | changes))


def test_protocol_id_is_readable_stable_and_sorted():
    fields = _fields()
    protocol = make_protocol(fields)
    assert protocol.id == "fmnist_classifier-n1000-ddim20-" + protocol.id.rsplit("-", 1)[1]
    assert protocol.id == "fmnist_classifier-n1000-ddim20-247d5ad9"  # pinned: a change here renames every score
    reordered = dict(reversed(list(fields.items())))
    reordered["sampler"] = dict(reversed(list(fields["sampler"].items())))
    assert protocol_id(reordered) == protocol.id
    assert protocol.scoring_id.startswith("fmnist_classifier-n1000-") and "ddim" not in protocol.scoring_id
    assert make_protocol(_fields(sampler=None)).id == protocol.scoring_id  # a GAN shares the table of a DDIM model


@pytest.mark.parametrize(
    "change",
    [
        {"extractor_sha256": "cd" * 32}, {"reference": "other/test@28px"}, {"n_real": 5000}, {"n_fake": 500},
        {"sampler": {"sampler": "ddim", "steps": 20, "eta": 1.0, "guidance_scale": 1.0}}, {"memorization": False},
        {"config": MetricsConfig(extractor="fmnist_classifier", seed=1)},
        {"config": MetricsConfig(extractor="fmnist_classifier", kid_subsets=10)},
        {"config": MetricsConfig(extractor="fmnist_classifier", prc_neighborhood=5)},
        {"config": MetricsConfig(extractor="fmnist_classifier", memorization_percentile=1.0)},
    ],
)  # fmt: skip
def test_everything_that_decides_a_score_changes_the_id(change):
    assert protocol_id(_fields(**change)) != protocol_id(_fields())


def test_machine_settings_do_not_enter_the_id():
    machine = MetricsConfig(extractor="fmnist_classifier", n_samples=1000, batch_size=7, device="cpu", cache_dir=None,
                            compile=True)  # fmt: skip
    assert protocol_id(_fields(config=machine)) == protocol_id(_fields())


def test_plan_names_the_protocol_before_any_work(tmp_path):
    from genbench.metrics import plan_evaluation

    real = torch.randint(0, 256, (40, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    plans = [plan_evaluation({"extractor": "fmnist_classifier", "cache_dir": None, "batch_size": b}, real, 30)
             for b in (5, 250)]  # fmt: skip
    assert plans[0].protocol.id == plans[1].protocol.id and plans[0].protocol.id.startswith("fmnist_classifier-n30-")
    assert plans[0].protocol.fields["reference"].startswith("sha256:") and plans[0].protocol.fields["n_real"] == 40


def test_legacy_records_get_a_legacy_id_apart_from_new_ones():
    old = {"extractor": "fmnist_classifier", "extractor_sha256": "ab", "n_real": 10000, "n_fake": 200,
           "reference": "test split (fmnist-seed3-test)", "sampler": "ddim", "sampler_steps": 20}  # fmt: skip
    protocol = legacy_protocol(old)
    assert protocol.id.startswith("legacy_fmnist_classifier-n200-ddim20-") and protocol.scoring_id != protocol.id
    assert legacy_protocol(old | {"reference": "test split (fmnist-seed4-test)"}).id == protocol.id  # seeds share
    assert record_protocol(old).id == protocol.id


# ------------------------------------------------------------------------------------------ score files
def _record(protocol: str, fid: float) -> dict:
    return {"protocol": protocol, "protocol_fields": {"n_fake": 1}, "scoring_protocol": protocol, "fid": fid}


def test_scores_of_different_protocols_never_replace_each_other(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert [p.name for p in write_score(run, _record("own-1", 10.0), own=True)] == ["own-1.json", "metrics.json"]
    assert write_score(run, _record("other-2", 20.0)) == [run / "metrics" / "other-2.json"]
    assert json.loads((run / "metrics.json").read_text())["fid"] == 10.0  # a re-score elsewhere leaves it
    # The run's own settings resolved to another protocol (say extractor=auto on another machine): kept too.
    assert write_score(run, _record("own-3", 30.0), own=True) == [run / "metrics" / "own-3.json"]
    assert json.loads((run / "metrics.json").read_text())["fid"] == 10.0
    # The same protocol again: same images, same numbers; replacing it is harmless.
    write_score(run, _record("own-1", 10.0), own=True)
    own, scores = read_scores(run)
    assert own["protocol"] == "own-1" and sorted(s["protocol"] for s in scores) == ["other-2", "own-1", "own-3"]


def test_a_metrics_json_from_before_protocol_ids_is_kept_aside(tmp_path):
    legacy = {"extractor": "fmnist_classifier", "extractor_sha256": "ab", "n_real": 10, "n_fake": 50, "reference": "r",
              "sampler": None, "fid": 99.0}  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(legacy))
    write_score(tmp_path, _record("new-1", 1.0), own=True)
    kept = tmp_path / "metrics" / f"{legacy_protocol(legacy).id}.json"
    assert json.loads(kept.read_text()) == legacy
    assert json.loads((tmp_path / "metrics.json").read_text())["protocol"] == "new-1"


# ------------------------------------------------------------------------------------------ metrics.* checks
@pytest.mark.parametrize(
    "values, words",
    [
        ({"extractor": "bogus"}, "bogus"), ({"n_samples": "abc"}, "n_samples"), ({"n_samples": 0}, "n_samples"),
        ({"batch_size": 0}, "batch_size"), ({"reference_split": "dev"}, "dev"), ({"kid_subsets": -1}, "kid_subsets"),
        ({"memorization_percentile": 150}, "percentile"), ({"inception_weights": "/nowhere.pth"}, "not a file"),
        ({"device": "tpu"}, "device"), ({"n_reference": 0}, "n_reference"), ({"nonsense": 1}, "nonsense"),
        ({"compile": "sometimes"}, "metrics.compile=sometimes; expected auto"),
        ({"batch_size": "big"}, "batch_size=big; expected auto"),
        ({"batch_size": 2.5}, "batch_size=2.5; expected auto or an integer"),
    ],
)  # fmt: skip
def test_bad_metrics_settings_are_user_errors(values, words):
    with pytest.raises(GenbenchError, match=words):
        MetricsConfig.from_cfg(values)
