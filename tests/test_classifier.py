"""The shipped Fashion-MNIST classifier: integrity, recorded accuracy, and its input handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genbench.data.idx import find_root, load_split
from genbench.errors import GenbenchError
from genbench.metrics.classifier import RECORD_PATH, WEIGHTS_PATH, load_classifier, read_record, sha256_file, to_grey28
from genbench.metrics.train_classifier import accuracy, augment


def test_shipped_weights_match_their_record():
    record = read_record()
    assert sha256_file(WEIGHTS_PATH) == record["sha256"]
    assert record["test_accuracy"] >= 0.92
    assert record["command"].startswith("python -m genbench.metrics.train_classifier")
    assert isinstance(record["seed"], int)
    assert WEIGHTS_PATH.stat().st_size < 5 * 2**20


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    import genbench.metrics.classifier as classifier

    copy = tmp_path / "fmnist_classifier.pt"
    copy.write_bytes(WEIGHTS_PATH.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(classifier, "WEIGHTS_PATH", copy)
    monkeypatch.setattr(classifier, "RECORD_PATH", RECORD_PATH)
    with pytest.raises(GenbenchError, match="sha256"):
        load_classifier()


def test_to_grey28_accepts_grey_or_rgb_at_any_size():
    grey = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    assert torch.allclose(to_grey28(grey), to_grey28(grey.expand(-1, 3, -1, -1)), atol=1e-5)
    assert to_grey28(torch.zeros(2, 3, 64, 48, dtype=torch.uint8)).shape == (2, 1, 28, 28)
    with pytest.raises(GenbenchError):
        to_grey28(torch.zeros(2, 4, 28, 28, dtype=torch.uint8))


def test_augment_shifts_and_flips_within_bounds():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= set(x.unique().tolist())


@pytest.mark.skipif(find_root(None) is None, reason="Fashion-MNIST IDX files not installed")
def test_shipped_classifier_test_accuracy_is_as_recorded():
    images, labels = load_split(find_root(None), "test")
    model, _ = load_classifier()
    measured = accuracy(model, torch.from_numpy(np.array(images)).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    assert measured >= 0.92
    assert measured == pytest.approx(read_record()["test_accuracy"], abs=1e-3)
