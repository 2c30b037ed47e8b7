"""No silent garbage: what cannot be a result is refused before anything is written, and what had to be converted
to be scored says so, in the score and (where it changes the pixels scored) in its protocol.

The CLI cases run in one batch (one heavy import, see conftest.run_cli_batch) against a two-step GAN and diffusion.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_contract_error, run_cli_batch, tiny_overrides, train_run
from genbench.data import ImageDataModule
from genbench.data.idx import find_root, load_split
from genbench.errors import GenbenchError
from genbench.imageio import check_finite, check_not_constant, load_images
from genbench.metrics.config import MetricsConfig, check_counts

N = 40  # generated images per folder
FAST = ["metrics.extractor=fmnist_classifier", "metrics.kid_subsets=10", f"metrics.n_samples={N}"]


def _save_folder(folder: Path, images) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


def _poisoned(ckpt: Path, out: Path, value: float) -> Path:
    """A copy of ``ckpt`` whose every floating-point weight (EMA copies included) is ``value``."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    for tensor in checkpoint["state_dict"].values():
        if tensor.is_floating_point():
            tensor.fill_(value)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory, fmnist) -> Path:
    root = tmp_path_factory.mktemp("garbage")
    images, _ = load_split(find_root(None), "test")
    fake, real = images[:N], images[N : N + 60]
    np.savez(root / "real.npz", images=real)
    _save_folder(root / "png8", fake)
    low = np.random.default_rng(0).integers(0, 256, fake.shape)  # a true 16-bit image: its low byte carries detail
    _save_folder(root / "png16", (fake.astype(np.uint16) * 256 + low).astype(np.uint16))
    _save_folder(root / "png32", [np.asarray(Image.fromarray(x).resize((32, 32), Image.BILINEAR)) for x in fake])
    _save_folder(root / "black", np.zeros((N, 28, 28), np.uint8))

    train_run(root / "gan", "gan", "budget.max_steps=2")
    # A completed GAN run (the CLI's folder for name=study) whose last.ckpt was replaced by a diffusion checkpoint.
    study = root / "runs" / "study" / "gan-seed0"
    train_run(study, "gan", "budget.max_steps=2")
    train_run(root / "diffusion", "diffusion", "budget.max_steps=2")
    shutil.copy(root / "diffusion" / "checkpoints" / "last.ckpt", study / "checkpoints" / "last.ckpt")
    _poisoned(root / "gan" / "checkpoints" / "last.ckpt", root / "nan" / "nan.ckpt", float("nan"))
    _poisoned(root / "gan" / "checkpoints" / "last.ckpt", root / "flat" / "flat.ckpt", 0.0)  # tanh(0): all grey
    return root


@pytest.fixture(scope="module")
def results(work) -> tuple[dict, dict]:
    """Every CLI case, and the foreign-checkpoint folder's files before them."""
    gan, study = work / "gan" / "checkpoints" / "last.ckpt", work / "runs" / "study" / "gan-seed0"
    samples = lambda name: ("evaluate", [f"samples={work / name}", f"reference={work / 'real.npz'}", *FAST])  # noqa: E731
    jobs = {
        "png8": samples("png8"),
        "png16": samples("png16"),
        "png32": samples("png32"),
        "black": samples("black"),
        "n_reference": ("evaluate", [f"ckpt={gan}", "metrics.n_reference=1", *FAST]),
        "prc": ("evaluate", [f"ckpt={gan}", "metrics.prc_neighborhood=100000", *FAST]),
        "foreign_evaluate": ("evaluate", [f"ckpt={study / 'checkpoints' / 'last.ckpt'}", *FAST]),
        "foreign_resume": ("train", [*tiny_overrides("gan"), "budget.max_steps=4", f"paths.runs_dir={work / 'runs'}",
                                     "name=study"]),  # fmt: skip
        "nan_sample": ("sample", [f"ckpt={work / 'nan' / 'nan.ckpt'}", "n=8", f"out={work / 'nan_out'}"]),
        "nan_evaluate": ("evaluate", [f"ckpt={work / 'nan' / 'nan.ckpt'}", *FAST]),
        "flat_sample": ("sample", [f"ckpt={work / 'flat' / 'flat.ckpt'}", "n=8", f"out={work / 'flat_out'}"]),
    }
    before = _files(study)
    return run_cli_batch(jobs, work / "cli"), before


def _score(folder: Path) -> dict:
    (path,) = (folder / "metrics").glob("*.json")
    return json.loads(path.read_text())


def test_16_bit_pngs_score_as_their_8_bit_selves_under_a_protocol_that_says_so(results, work):
    for name in ("png8", "png16"):
        assert results[0][name].returncode == 0, results[0][name].stderr[-3000:]
    eight, sixteen = _score(work / "png8"), _score(work / "png16")
    assert torch.equal(load_images(work / "png16")[0], load_images(work / "png8")[0])  # high bytes, not white
    for key in ("fid", "kid_mean", "precision", "recall", "is_mean"):
        assert sixteen[key] == eight[key], key
    assert eight["conversions"] == [] and "conversions" not in eight["protocol_fields"]
    assert sixteen["conversions"] == [f"generated images: 16-bit grey to 8-bit, the high byte (v >> 8): {N} of {N} files"]
    assert sixteen["protocol_fields"]["conversions"] == sixteen["conversions"]  # low bytes were dropped
    assert sixteen["protocol"] != eight["protocol"]
    assert "16-bit grey to 8-bit" in results[0]["png16"].stderr  # and logged


def test_images_of_another_size_than_the_reference_are_recorded_and_change_the_protocol(results, work):
    assert results[0]["png32"].returncode == 0, results[0]["png32"].stderr[-3000:]
    resized, eight = _score(work / "png32"), _score(work / "png8")
    (conversion,) = resized["conversions"]
    assert "generated images are 1x32x32" in conversion and "the reference 1x28x28" in conversion
    assert resized["protocol_fields"]["conversions"] == [conversion] and resized["protocol"] != eight["protocol"]
    assert conversion in results[0]["png32"].stderr


def test_a_flat_or_non_finite_generated_set_is_refused_before_anything_is_written(results, work):
    assert_contract_error(results[0]["black"], "one flat colour", "every pixel 0")
    assert not (work / "black" / "metrics").exists()
    assert_contract_error(results[0]["nan_sample"], "NaN or inf", "gan")
    assert_contract_error(results[0]["flat_sample"], "one flat colour")
    assert not any(p.name.startswith(("nan_out", "flat_out", ".nan_out", ".flat_out")) for p in work.iterdir())
    result = results[0]["nan_evaluate"]  # after the log lines of the planning: the last line, no traceback
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "NaN or inf" in result.stderr.strip().splitlines()[-1] and not (work / "nan" / "metrics").exists()


@pytest.mark.parametrize("case, words", [("n_reference", ["1 reference images", "metrics.n_reference"]),
                                         ("prc", ["metrics.prc_neighborhood=100000", "100002"])])  # fmt: skip
def test_counts_the_metrics_cannot_use_are_refused_before_sampling(results, work, case, words):
    result = results[0][case]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("genbench: error:") and all(word in last for word in words), last
    assert "sampling" not in result.stderr and not (work / "gan" / "metrics").exists()


def test_a_checkpoint_of_another_run_is_refused_by_evaluate_and_resume_touching_nothing(results, work):
    (results_, before) = results
    study = work / "runs" / "study" / "gan-seed0"
    assert_contract_error(results_["foreign_evaluate"], "does not belong", "a diffusion checkpoint", "is a gan run")
    result = results_["foreign_resume"]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("genbench: error:") and "does not belong" in last and "diffusion" in last, last
    assert _files(study) == before  # config.yaml, .hydra/, train.log, run.json, metrics/: all as they were


def test_loading_converts_every_png_mode_explicitly(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    cases = {
        "rgba_opaque": (Image.fromarray(np.stack([grey] * 3 + [np.full_like(grey, 255)], -1), "RGBA"), 3, False),
        "la_transparent": (Image.fromarray(np.stack([grey, grey], -1), "LA"), 1, True),
        "palette_grey": (Image.fromarray(grey).convert("P"), 1, False),
        "one_bit": (Image.fromarray(grey).convert("1"), 1, False),
    }
    for name, (image, channels, changes_score) in cases.items():
        (tmp_path / name).mkdir()
        image.save(tmp_path / name / "a.png")
        images, (conversion,) = load_images(tmp_path / name)
        assert images.shape == (1, channels, 8, 8) and conversion.changes_score == changes_score, name
    assert torch.equal(load_images(tmp_path / "rgba_opaque")[0][0, 0], torch.from_numpy(grey))
    assert set(load_images(tmp_path / "one_bit")[0].unique().tolist()) <= {0, 255}
    assert torch.equal(load_images(tmp_path / "palette_grey")[0][0, 0], torch.from_numpy(grey))


def test_generated_batches_are_checked():
    with pytest.raises(GenbenchError, match="1 of 2 generated images hold NaN"):
        check_finite(torch.tensor([[[[0.0, 0.5]]], [[[float("nan"), 0.0]]]]), "test")
    with pytest.raises(GenbenchError, match=r"one flat colour \(every pixel 7\)"):
        check_not_constant(torch.full((3, 1, 4, 4), 7, dtype=torch.uint8), "test")
    check_not_constant(torch.tensor([[[[0, 1]]]], dtype=torch.uint8), "test")


def test_check_counts_names_the_key_and_the_need():
    config = MetricsConfig(prc_neighborhood=3)
    check_counts(config, 10, 10)
    check_counts(config, None, 10)  # reference count unknown yet
    with pytest.raises(GenbenchError, match=r"9 generated images \(metrics.n_samples\)"):
        check_counts(config, 10, 9)
    with pytest.raises(GenbenchError, match=r"needs at least 22"):
        check_counts(MetricsConfig(prc_neighborhood=20), 21, 100)


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_an_idx_label_outside_the_classes_is_one_line_naming_file_and_label(tmp_path):
    for images_name, labels_name in (("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                                     ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):  # fmt: skip
        _idx(tmp_path / images_name, np.zeros((12, 28, 28)))
        _idx(tmp_path / labels_name, np.arange(12) % 10)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 255, 4, 5, 6, 7, 8, 9, 0, 1]))
    with pytest.raises(GenbenchError, match=r"train-labels-idx1-ubyte.gz: label 255 at index 3") as info:
        ImageDataModule(root=str(tmp_path), cache_dir=str(tmp_path / "cache")).setup()
    assert "\n" not in str(info.value)
