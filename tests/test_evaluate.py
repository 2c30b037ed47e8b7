"""``python -m genbench.evaluate`` as a user runs it: JSON on stdout, metrics.json on disk, contract errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genbench.data.idx import find_root, load_split
from genbench.metrics import CONTRACT_FIELDS

ROOT = find_root(None)
REPO = Path(__file__).resolve().parents[1]
N = 300


def _run(*overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "GENBENCH_OFFLINE": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "genbench.evaluate", *overrides], capture_output=True, text=True, env=full_env, cwd=REPO, timeout=300
    )


def _test_images(n: int, offset: int = 0) -> np.ndarray:
    images, _ = load_split(ROOT, "test")
    return np.array(images[offset : offset + n])


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pngs")
    for i, image in enumerate(_test_images(N)):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder


@pytest.mark.skipif(ROOT is None, reason="Fashion-MNIST IDX files not installed")
def test_samples_folder_against_fashion_mnist_prints_and_writes_all_fields(png_dir, tmp_path):
    result = _run(
        f"samples={png_dir}", "data=fashion_mnist", f"metrics.n_samples={N}", "metrics.n_reference=2000",
        "metrics.extractor=fmnist_classifier", f"metrics.cache_dir={tmp_path / 'cache'}", "metrics.kid_subsets=10",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert set(CONTRACT_FIELDS) <= set(record)
    assert record["n_fake"] == N and record["n_real"] == 2000 and record["extractor"] == "fmnist_classifier"
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "memorization"):
        assert isinstance(record[key], float), key
    assert record["kid_subset_size"] == N and record["isc_splits"] == 3
    assert record["memorization"] < 0.2  # test images are not training copies
    assert json.loads((png_dir / "metrics.json").read_text()) == record


def test_npz_against_reference_npz_writes_beside_it(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "fake.npz", images=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8))
    np.savez(tmp_path / "real.npz", images=rng.integers(0, 256, (80, 28, 28), dtype=np.uint8))
    result = _run(
        f"samples={tmp_path / 'fake.npz'}", f"reference={tmp_path / 'real.npz'}", "metrics.extractor=fmnist_classifier",
        f"metrics.cache_dir={tmp_path / 'cache'}", "metrics.kid_subsets=5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["n_fake"] == 60 and record["n_real"] == 80 and record["memorization"] is None
    assert json.loads((tmp_path / "fake.metrics.json").read_text()) == record


def _assert_contract_error(result: subprocess.CompletedProcess, *words: str, only_line: bool = True) -> None:
    """Exit 2, stderr ends with one ``genbench: error:`` line (the only line, unless logs may precede it)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("genbench: error:") and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 or not only_line, result.stderr
    for word in words:
        assert word in lines[-1]
    assert result.stdout == ""


def test_bad_samples_path_is_a_contract_error(tmp_path):
    _assert_contract_error(_run(f"samples={tmp_path / 'nowhere'}"), "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_inception_offline_without_weights_is_a_contract_error(tmp_path):
    np.savez(tmp_path / "fake.npz", images=np.zeros((20, 28, 28), dtype=np.uint8))
    result = _run(
        f"samples={tmp_path / 'fake.npz'}", f"reference={tmp_path / 'fake.npz'}", "metrics.extractor=inception",
        env={"TORCH_HOME": str(tmp_path / "torch")},
    )  # fmt: skip
    _assert_contract_error(result, "metrics.inception_weights", only_line=False)
    assert not (tmp_path / "fake.metrics.json").exists()


def test_neither_ckpt_nor_samples_is_a_contract_error():
    _assert_contract_error(_run(), "ckpt=PATH")
