"""Numerics of the evaluator on real Fashion-MNIST images, checked against torchmetrics and torch-fidelity."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch_fidelity
from torchmetrics.image.fid import FrechetInceptionDistance

from genbench.data.idx import find_root, load_split
from genbench.errors import GenbenchError
from genbench.metrics import MetricsConfig, evaluate_images, evaluate_model, images_from_tensor
from genbench.metrics.extractors import FMNIST, build_extractor
from genbench.metrics.fidelity import fid, score
from genbench.metrics.memorization import memorization, nearest_distances

N = 400
ROOT = find_root(None)
pytestmark = pytest.mark.skipif(ROOT is None, reason="Fashion-MNIST IDX files not installed")


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(images)).unsqueeze(1)


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    train, _ = load_split(ROOT, "train")
    test, _ = load_split(ROOT, "test")
    g = torch.Generator().manual_seed(0)
    return {
        "train": _tensor(train[:2000]),
        "test": _tensor(test[: 2 * N]),
        "noise": torch.randint(0, 256, (N, 1, 28, 28), generator=g, dtype=torch.uint8),
        "constant": torch.full((N, 1, 28, 28), 128, dtype=torch.uint8),
    }


@pytest.fixture(scope="module")
def extractor():
    return build_extractor(FMNIST, channels=1)


@pytest.fixture(scope="module")
def feats(data, extractor) -> dict[str, dict[str, torch.Tensor]]:
    return {name: extractor.features(images) for name, images in data.items()}


def _score(feats, fake: str, real: str, **kwargs) -> dict:
    a, b = feats[fake], feats[real]
    if fake == real == "test":  # two disjoint halves of the test images
        a = {k: v[:N] for k, v in a.items()}
        b = {k: v[N:] for k, v in b.items()}
    return score(a, b, "penultimate", "logits", **kwargs)


def test_fid_of_a_set_against_itself_is_zero(feats):
    assert abs(fid(feats["test"], feats["test"], "penultimate")) < 1e-3


def test_fid_orders_real_far_below_noise(feats):
    real = fid({"f": feats["train"]["penultimate"][:N]}, {"f": feats["test"]["penultimate"][:N]}, "f")
    noise = fid(feats["noise"], feats["test"], "penultimate")
    assert real < 0.1 * noise, (real, noise)


def test_torch_fidelity_fid_matches_torchmetrics(feats):
    class Identity(torch.nn.Module):
        num_features = feats["train"]["penultimate"].shape[1]

        def forward(self, x):
            return x

    metric = FrechetInceptionDistance(feature=Identity()).double()
    metric.update(feats["train"]["penultimate"][:N].double(), real=True)
    metric.update(feats["test"]["penultimate"][:N].double(), real=False)
    expected = float(metric.compute())
    ours = fid({"f": feats["test"]["penultimate"][:N]}, {"f": feats["train"]["penultimate"][:N]}, "f")
    assert ours == pytest.approx(expected, rel=1e-3)


class _FeatureModule(torch.nn.Module):
    """genbench's extractor as torchmetrics takes a custom one: uint8 images in, one feature row per image out."""

    def __init__(self, extractor):
        super().__init__()
        self.extractor = extractor
        self.num_features = 128  # the classifier's penultimate layer; torchmetrics would otherwise probe

    def forward(self, images):
        return self.extractor.features(images)[self.extractor.feature_layer]


def test_fid_equals_torchmetrics_given_the_extractor_as_its_feature_module(data, extractor, tmp_path):
    real, held = data["test"][:N], data["test"][N:]
    noise = torch.randn(held.shape, generator=torch.Generator().manual_seed(1)) * 40
    noised = (held.float() + noise).clamp(0, 255).to(torch.uint8)
    cfg = {"extractor": FMNIST, "cache_dir": str(tmp_path), "kid_subsets": 2, "memorization": False}
    for fake in (held, noised):
        record = evaluate_images(fake, real, cfg)
        metric = FrechetInceptionDistance(feature=_FeatureModule(extractor))
        metric.update(real, real=True)
        metric.update(fake, real=False)
        assert record["fid"] == pytest.approx(float(metric.compute()), rel=1e-4)
        for key in ("fid_inf", "is_inf", "density", "coverage"):  # every record carries the new fields
            assert isinstance(record[key], float), key
    assert record["fid"] > 10 * evaluate_images(held, real, cfg)["fid"]  # the noised images are far off


def test_registered_extractor_runs_inside_torch_fidelity(data, feats):
    """torch_fidelity.calculate_metrics with feature_extractor='fmnist_classifier' agrees with our pipeline."""

    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    out = torch_fidelity.calculate_metrics(
        input1=Images(data["train"][:N]), input2=Images(data["test"][:N]), fid=True, isc=True,
        feature_extractor=FMNIST, cuda=False, cache=False, verbose=False, save_cpu_ram=True, batch_size=200,
    )  # fmt: skip
    ours = fid({"f": feats["train"]["penultimate"][:N]}, {"f": feats["test"]["penultimate"][:N]}, "f")
    assert out["frechet_inception_distance"] == pytest.approx(ours, rel=1e-3)
    assert out["inception_score_mean"] > 5


def test_inception_score_high_for_real_and_one_for_constant(feats):
    real = _score(feats, "test", "test")
    constant = _score(feats, "constant", "test")
    assert real["is_mean"] > 6, real
    assert constant["is_mean"] == pytest.approx(1.0, abs=1e-3)


def test_kid_of_disjoint_real_subsets_is_near_zero(feats):
    real = _score(feats, "test", "test", kid_subset_size=200)
    noise = _score(feats, "noise", "test", kid_subset_size=200)
    assert abs(real["kid_mean"]) < 0.01 * noise["kid_mean"], (real["kid_mean"], noise["kid_mean"])


def test_precision_recall_high_for_real_low_for_noise(feats):
    real = _score(feats, "test", "test")
    noise = _score(feats, "noise", "test")
    assert real["precision"] > 0.8 and real["recall"] > 0.8, real
    assert noise["precision"] < 0.1 and noise["recall"] < 0.1, noise


def test_small_counts_adapt_kid_subset_and_is_splits(feats):
    small = {k: v[:150] for k, v in feats["test"].items()}
    record = score(small, feats["train"], "penultimate", "logits")
    assert record["kid_subset_size"] == 150 and record["isc_splits"] == 1
    with pytest.raises(GenbenchError):
        score({k: v[:5] for k, v in small.items()}, feats["train"], "penultimate", "logits")


def test_precision_recall_equal_torch_fidelity_with_and_without_cached_radii(feats):
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_featuresdict_to_metric

    from genbench.metrics.fidelity import knn_radii, precision_recall_density_coverage

    def precision_recall(fake, real, k, radii=None):
        found = precision_recall_density_coverage(fake, real, k, radii)
        return found["precision"], found["recall"]

    fake, real = feats["train"]["penultimate"][:700], feats["test"]["penultimate"]
    theirs = prc_featuresdict_to_metric({"f": fake}, {"f": real}, "f", prc_neighborhood=3, prc_batch_size=10000,
                                        save_cpu_ram=True, verbose=False)  # fmt: skip
    expected = (theirs[KEY_METRIC_PRECISION], theirs[KEY_METRIC_RECALL])
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert precision_recall(fake, real, 3) == expected
    assert precision_recall(fake, real, 3, knn_radii(real, 3)) == expected


def test_nearest_distances_equal_torch_cdist(feats):
    train, test = feats["train"]["penultimate"], feats["test"]["penultimate"]
    queries = torch.cat([train[:5], test[:300]])  # five exact copies: distance ~0, never NaN from a negative root
    ours = nearest_distances(queries, train)
    exact = torch.cdist(queries.double(), train.double()).min(dim=1).values.float()
    # fp32 squared distances through a matrix product cancel to ~1e-7 of ||x||^2: absolute error ~1e-2 near 0
    torch.testing.assert_close(ours, exact, rtol=1e-4, atol=2e-2)
    assert ours[:5].max() < 2e-2 < ours[5:].min() and not ours.isnan().any()


def test_memorization_high_for_training_copies_low_for_heldout(feats):
    train, test = feats["train"]["penultimate"], feats["test"]["penultimate"]
    copies = memorization(train[:N], train, test[N:])
    novel = memorization(test[:N], train, test[N:])
    assert copies["memorization"] > 0.95, copies
    assert novel["memorization"] < 0.15, novel


def test_extractor_adapts_rgb_and_size_identically(data, extractor):
    grey = data["test"][:50]
    rgb = grey.expand(-1, 3, -1, -1)
    a = extractor.features(grey)["penultimate"]
    b = extractor.features(rgb)["penultimate"]
    assert torch.allclose(a, b, atol=1e-4)
    big = torch.nn.functional.interpolate(grey.float(), size=56, mode="nearest").to(torch.uint8)
    assert extractor.features(big)["penultimate"].shape == a.shape
    with pytest.raises(GenbenchError):
        extractor.features(torch.zeros(4, 2, 28, 28, dtype=torch.uint8))


def test_evaluate_images_caches_reference_and_rebuilds_corrupt_entry(data, tmp_path, caplog):
    cfg = {"extractor": FMNIST, "cache_dir": str(tmp_path), "kid_subsets": 10}
    fake, real = data["test"][:N], data["test"][N:]
    first = evaluate_images(fake, real, cfg)
    assert (first["cache_hits"], first["cache_misses"]) == (0, 2)  # the reference's features and its k-NN radii
    with caplog.at_level(logging.INFO, logger="genbench.metrics.cache"):
        second = evaluate_images(fake, real, cfg)
    assert (second["cache_hits"], second["cache_misses"]) == (2, 0)
    assert "cache hit" in caplog.text
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-6)
    assert (second["precision"], second["recall"]) == (first["precision"], first["recall"])  # cached radii: same balls

    entries = list((tmp_path / "features").glob("*.pt"))
    assert len(entries) == 2
    for entry in entries:
        entry.write_bytes(b"not a torch file")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="genbench.metrics.cache"):
        third = evaluate_images(fake, real, cfg)
    assert "corrupt cache entry" in caplog.text
    assert (third["cache_hits"], third["cache_misses"]) == (0, 2)
    assert third["fid"] == pytest.approx(first["fid"], rel=1e-6)
    assert evaluate_images(fake, real, cfg)["cache_hits"] == 2  # rebuilt entries are good again


class _StubModel(torch.nn.Module):
    """Replays real images through the ``sample`` interface (a perfect copier)."""

    family = "stub"
    takes_sampler = False  # it replays images: no solver, no network evaluations to count

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images, self.num_classes, self.calls = images, 10, []
        self.image_shape = tuple(images.shape[1:])

    def sampler_settings(self, sampler):
        return dict(sampler or {}) or None  # takes whatever sampler it is given

    def sampling_parts(self, n, **settings):
        return []  # replaying stored images runs no network: nothing to count

    def sample(self, n, labels=None, generator=None, **kwargs):
        self.calls.append((n, None if labels is None else labels.tolist(), kwargs))
        start = sum(c[0] for c in self.calls[:-1])
        return self.images[start : start + n].float() / 127.5 - 1


class _StubData:
    fingerprint, channels, image_size = "stub-fmnist", 1, 28

    def __init__(self, splits):
        self.splits = splits

    def images(self, split):
        return self.splits[split]


def test_evaluate_model_samples_balanced_labels_and_fills_the_contract(data, tmp_path):
    model = _StubModel(data["train"][:300])
    datamodule = _StubData({"train": data["train"], "test": data["test"], "val": data["test"]})
    cfg = MetricsConfig(extractor=FMNIST, n_samples=300, batch_size=128, kid_subsets=10, cache_dir=str(tmp_path))
    record = evaluate_model(model, cfg, datamodule, {"name": "ddim", "steps": 7})
    from genbench.metrics import CONTRACT_FIELDS

    assert list(record)[: len(CONTRACT_FIELDS)] == list(CONTRACT_FIELDS)
    assert [c[0] for c in model.calls] == [128, 128, 44]
    assert model.calls[0][1][:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert model.calls[0][2] == {"sampler": "ddim", "steps": 7}
    assert record["n_fake"] == 300 and record["n_real"] == 2 * N
    assert (record["sampler"], record["sampler_steps"]) == ("ddim", 7)  # what the model said applies is recorded
    assert record["protocol"].startswith("fmnist_classifier-n300-ddim7-") and record["sampler_settings"] == model.calls[0][2]
    assert record["sample_seconds_per_1k"] >= 0
    assert record["sampling_compiled"] is False and "sampling_compile_seconds" not in record  # nothing to compile
    assert record["memorization"] > 0.95  # the stub copies training images


def test_inception_offline_without_weights_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("GENBENCH_OFFLINE", "1")
    with pytest.raises(GenbenchError, match="inception_weights"):
        build_extractor("inception", channels=1)
    with pytest.raises(GenbenchError, match="not a file"):
        build_extractor("inception", channels=1, inception_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(GenbenchError, match="Inception weights"):
        build_extractor("auto", channels=3)
    assert build_extractor("auto", channels=1).name == FMNIST
    with pytest.raises(GenbenchError, match="unknown metrics.extractor"):
        build_extractor("nope", channels=1)


def test_inception_from_a_local_weights_file(data, tmp_path, monkeypatch):
    """The Inception path end to end, on randomly initialised weights saved where metrics.inception_weights points."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    with monkeypatch.context() as patch:  # build once without any download to get a state dict of the right shape
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    monkeypatch.setenv("GENBENCH_OFFLINE", "1")
    cfg = {"extractor": "inception", "inception_weights": str(weights), "cache_dir": None, "kid_subsets": 5, "batch_size": 12}
    record = evaluate_images(data["test"][:12].expand(-1, 3, -1, -1), data["test"][12:24], cfg)  # RGB vs grey
    assert record["extractor"] == "inception-v3-compat"
    from genbench.metrics.classifier import sha256_file

    assert record["extractor_sha256"] == sha256_file(weights)
    assert record["kid_subset_size"] == 12 and record["isc_splits"] == 1 and record["is_mean"] >= 1 - 1e-6
    assert np.isfinite(record["fid"])


def test_heldout_distances_are_cached_and_equal_a_fresh_search(data, tmp_path):
    """Memorization's held-out search runs once per (train, held-out, extractor); the cached distances give the same
    record as a search without cache, and another held-out set is another entry."""
    datamodule = _StubData({"train": data["train"], "test": data["test"], "val": data["test"][:N]})
    model = _StubModel(data["train"][:300])
    cfg = MetricsConfig(extractor=FMNIST, n_samples=300, batch_size=128, kid_subsets=10, cache_dir=str(tmp_path))
    first = evaluate_model(model, cfg, datamodule)
    model.calls.clear()
    second = evaluate_model(model, cfg, datamodule)
    assert second["cache_misses"] == 0 and second["cache_hits"] == first["cache_hits"] + first["cache_misses"]
    model.calls.clear()
    fresh = evaluate_model(model, MetricsConfig(**{**cfg.__dict__, "cache_dir": None}), datamodule)
    keys = ("memorization", "memorization_threshold", "memorization_median_nn_heldout", "n_heldout")
    assert [first[k] for k in keys] == [second[k] for k in keys] == [fresh[k] for k in keys]
    model.calls.clear()
    other = evaluate_model(model, MetricsConfig(**{**cfg.__dict__, "heldout_split": "val"}), datamodule)
    assert other["n_heldout"] == N and other["memorization_threshold"] != first["memorization_threshold"]
    assert other["cache_misses"] == 2  # the val features and their distances; train's features are a hit
