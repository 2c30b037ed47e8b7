"""``python -m genbench.evaluate`` as a user runs it: JSON on stdout, metrics.json on disk, contract errors.

All commands run in one batch (one heavy import, see conftest.run_cli_batch), sharing the session's cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAMILIES, assert_contract_error, requires_fmnist, run_cli_batch, train_run
from genbench.data.idx import find_root, load_split
from genbench.metrics import CONTRACT_FIELDS

N = 300
FAST = ["metrics.n_reference=1000", "metrics.heldout_split=val", "metrics.kid_subsets=10", "metrics.extractor=fmnist_classifier"]
pytestmark = requires_fmnist


@pytest.fixture(scope="module")
def work(tmp_path_factory, fmnist) -> Path:
    """A folder of real test PNGs, npz files, and a two-step run of every family."""
    root = tmp_path_factory.mktemp("evaluate")
    (root / "pngs").mkdir()
    images, _ = load_split(find_root(None), "test")
    for i, image in enumerate(images[:N]):
        Image.fromarray(image).save(root / "pngs" / f"{i:04d}.png")
    rng = np.random.default_rng(0)
    np.savez(root / "fake.npz", images=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8))
    np.savez(root / "real.npz", images=rng.integers(0, 256, (80, 28, 28), dtype=np.uint8))
    for family in FAMILIES:
        train_run(root / family, family, "budget.max_steps=2")
    return root


@pytest.fixture(scope="module")
def results(work) -> dict:
    jobs = {
        "pngs": [f"samples={work / 'pngs'}", "data=fashion_mnist", f"metrics.n_samples={N}", "data.subset=2000", *FAST],
        "pngs_again": [f"samples={work / 'pngs'}", f"metrics.n_samples={N}", "data.subset=2000", *FAST, f"out={work / 'again.json'}"],
        "npz": [f"samples={work / 'fake.npz'}", f"reference={work / 'real.npz'}", *FAST],
        "bad_path": [f"samples={work / 'nowhere'}"],
        "neither": [],
        "inception_offline": [f"samples={work / 'fake.npz'}", f"reference={work / 'real.npz'}", "metrics.extractor=inception",
                              "metrics.inception_weights=null"],
        **{family: [f"ckpt={work / family / 'checkpoints' / 'last.ckpt'}", "metrics.n_samples=100", "sampler.steps=3", *FAST]
           for family in FAMILIES},
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as env:  # no network, and an empty torch hub: no Inception weights anywhere
        env.setenv("GENBENCH_OFFLINE", "1")
        env.setenv("TORCH_HOME", str(work / "torch_home"))
        return run_cli_batch({name: ("evaluate", args) for name, args in jobs.items()}, work / "cli")


def _record(result) -> dict:
    """The one JSON object the command prints on stdout (logs and progress go to stderr)."""
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = result.stdout.strip().splitlines()
    return json.loads(line)


def test_samples_folder_against_fashion_mnist_prints_and_writes_all_fields(results, work):
    record = _record(results["pngs"])
    assert set(CONTRACT_FIELDS) <= set(record)
    assert record["n_fake"] == N and record["n_real"] == 1000 and record["extractor"] == "fmnist_classifier"
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "memorization"):
        assert isinstance(record[key], float), key
    assert record["kid_subset_size"] == N and record["isc_splits"] == 3
    assert record["memorization"] < 0.2 and record["n_train"] == 2000  # test images are not training copies
    assert json.loads((work / "pngs" / "metrics.json").read_text()) == record


def test_second_evaluation_hits_the_cache(results, work):
    again = _record(results["pngs_again"])
    assert again["cache_misses"] == 0 and again["cache_hits"] >= 3  # reference, train, held-out
    assert again["fid"] == pytest.approx(_record(results["pngs"])["fid"], rel=1e-6)
    assert json.loads((work / "again.json").read_text()) == again  # out=PATH


def test_npz_against_reference_npz_writes_beside_it(results, work):
    record = _record(results["npz"])
    assert record["n_fake"] == 60 and record["n_real"] == 80 and record["memorization"] is None
    assert json.loads((work / "fake.metrics.json").read_text()) == record


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_of_every_family_is_scored_into_its_run_dir(results, work, family):
    record = _record(results[family])
    assert set(CONTRACT_FIELDS) <= set(record)
    assert record["n_fake"] == 100 and record["family"] == family and record["sample_seconds_per_1k"] > 0
    assert all(isinstance(record[k], float) for k in ("fid", "kid_mean", "precision", "recall", "memorization"))
    if family == "diffusion":
        assert (record["sampler"], record["sampler_steps"]) == ("ddim", 3)
    else:
        assert record["sampler"] is None and record["sampler_steps"] is None
    assert json.loads((work / family / "metrics.json").read_text()) == record


def test_bad_samples_path_is_a_contract_error(results, work):
    assert_contract_error(results["bad_path"], "does not exist")
    assert not (work / "nowhere").exists()


def test_neither_ckpt_nor_samples_is_a_contract_error(results):
    assert_contract_error(results["neither"], "ckpt=PATH")


def test_inception_offline_without_weights_is_a_contract_error(results, work):
    result = results["inception_offline"]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]  # after the log lines of the work done before it
    assert last.startswith("genbench: error:") and "metrics.inception_weights" in last
    assert result.stdout == ""
