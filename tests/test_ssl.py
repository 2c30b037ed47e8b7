"""The label-free extractor (``metrics.extractor=fmnist_ssl``): shipped weights and record, its training pieces, and
its features telling garments apart without having seen a label."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import requires_fmnist
from genbench.errors import GenbenchError
from genbench.metrics import ssl
from genbench.metrics.classifier import read_record, sha256_file
from genbench.metrics.extractors import build_extractor


def test_shipped_weights_match_their_record_which_holds_the_probe_accuracies():
    record = read_record(ssl.RECORD_PATH)
    assert sha256_file(ssl.WEIGHTS_PATH) == record["sha256"] and ssl.WEIGHTS_PATH.stat().st_size < 5 * 2**20
    assert record["command"].startswith("python -m genbench.metrics.train_ssl") and "no labels" in record["method"]
    for key in ("knn_accuracy", "linear_probe_accuracy"):  # README: beside the classifier's
        assert 0.75 < record[key] <= record["classifier"][key] + 0.05, key
    encoder, sha = ssl.load_ssl()
    assert sha == record["sha256"] and not encoder.training


def test_corrupt_shipped_weights_are_refused(tmp_path, monkeypatch):
    copy = tmp_path / "fmnist_ssl.pt"
    copy.write_bytes(ssl.WEIGHTS_PATH.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(ssl, "WEIGHTS_PATH", copy)
    with pytest.raises(GenbenchError, match="corrupt"):
        ssl.load_ssl()


def test_the_extractor_has_features_and_no_inception_score_and_takes_rgb_as_grey():
    extractor = build_extractor("fmnist_ssl", 1)
    assert extractor.feature_layer == "penultimate" and extractor.isc_layer is None
    assert extractor.weights_sha256 == read_record(ssl.RECORD_PATH)["sha256"]
    grey = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    features = extractor.features(grey)["penultimate"]
    assert features.shape == (5, 128) and list(extractor.features(grey)) == ["penultimate"]
    assert torch.allclose(extractor.features(grey.expand(-1, 3, -1, -1))["penultimate"], features, atol=1e-4)


def test_views_are_seeded_per_image_and_keep_the_pixel_range():
    images = torch.rand(64, 1, 28, 28)
    first = ssl.views(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, ssl.views(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, ssl.views(images, torch.Generator().manual_seed(4)))
    assert first.min() >= 0 and first.max() <= 1 and first.shape == images.shape
    same = ssl.views(images[:1].expand(64, -1, -1, -1).contiguous(), torch.Generator().manual_seed(0))
    assert len({tuple(v.flatten()[:50].tolist()) for v in same}) == 64  # each image its own crop, mirror and jitter


def test_nt_xent_equals_its_definition_written_as_a_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2, t = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), 0.3
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    losses = []
    for i in range(12):
        partner = (i + 6) % 12
        others = [j for j in range(12) if j != i]
        denominator = sum(math.exp(float(z[i] @ z[j]) / t) for j in others)
        losses.append(-(float(z[i] @ z[partner]) / t - math.log(denominator)))
    assert ssl.nt_xent(z1, z2, t).item() == pytest.approx(np.mean(losses), rel=1e-5)


def test_probes_read_class_structure_and_only_class_structure():
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(10, 16, generator=g)
    labels = torch.arange(2000) % 10
    features = centres[labels] + torch.randn(2000, 16, generator=g)
    train, test = features[:1500], features[1500:]
    assert ssl.knn_accuracy(train, labels[:1500], test, labels[1500:]) > 0.95
    assert ssl.linear_probe_accuracy(train, labels[:1500], test, labels[1500:]) > 0.95
    noise = torch.randn(2000, 16, generator=g)  # no class in the features: chance
    assert ssl.knn_accuracy(noise[:1500], labels[:1500], noise[1500:], labels[1500:]) < 0.2
    assert ssl.linear_probe_accuracy(noise[:1500], labels[:1500], noise[1500:], labels[1500:]) < 0.2


def test_training_is_deterministic_and_reads_no_labels(tmp_path):
    from genbench.metrics.train_ssl import train

    images = torch.randint(0, 256, (96, 1, 28, 28), dtype=torch.uint8)
    one, _, losses = train(images, 1, 0, 32, 1e-3, 4, 0.2)
    two, _, _ = train(images, 1, 0, 32, 1e-3, 4, 0.2)
    assert len(losses) == 1 and math.isfinite(losses[0])
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_training_arguments_are_one_line_errors(tmp_path, capsys):
    from genbench.metrics.train_ssl import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--epochs", "0", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("genbench: error: --epochs")
    assert not any(tmp_path.iterdir())


@requires_fmnist
def test_without_labels_its_features_still_tell_garments_apart(fmnist):
    """k-NN on 10,000 training images' features, 2,000 test images: far above chance (0.1), near the record's."""
    from genbench.data.idx import find_root, split_tensors

    train_x, train_y = split_tensors(find_root(None), "train")
    test_x, test_y = split_tensors(find_root(None), "test")
    extractor = build_extractor("fmnist_ssl", 1)
    features = lambda x: extractor.features(x)["penultimate"]  # noqa: E731
    accuracy = ssl.knn_accuracy(features(train_x[:10000]), train_y[:10000], features(test_x[:2000]), test_y[:2000])
    assert accuracy > read_record(ssl.RECORD_PATH)["knn_accuracy"] - 0.05


@requires_fmnist
def test_a_run_is_scored_under_each_extractor_and_one_added_later_without_retraining(tmp_path, fmnist):
    import json

    from conftest import train_run

    run = tmp_path / "gan"
    common = ["budget.max_steps=2", "evaluate=true", "metrics.n_samples=60", "metrics.n_reference=500",
              "metrics.heldout_split=val", "metrics.kid_subsets=5", "metrics.extractor=fmnist_classifier"]  # fmt: skip
    train_run(run, "gan", *common)
    before = json.loads((run / "run.json").read_text())
    own = json.loads((run / "metrics.json").read_text())
    assert [p.stem for p in (run / "metrics").glob("*.json")] == [own["protocol"]]
    added = train_run(run, "gan", *common, "metrics.extractors=[fmnist_classifier,fmnist_ssl]")
    after = json.loads((run / "run.json").read_text())
    assert after["steps"] == before["steps"] == 2 and after["weights_sha256"] == before["weights_sha256"]
    [other] = added["other_metrics"]
    assert other["extractor"] == "fmnist_ssl" and other["n_fake"] == 60 and other["is_mean"] is None
    assert added["metrics"]["fid"] == own["fid"] and json.loads((run / "metrics.json").read_text())["protocol"] == own["protocol"]
    assert sorted(p.stem for p in (run / "metrics").glob("*.json")) == sorted([own["protocol"], other["protocol"]])
    again = train_run(run, "gan", *common, "metrics.extractors=[fmnist_classifier,fmnist_ssl]")
    assert "other_metrics" not in again  # every score is there: nothing to do
