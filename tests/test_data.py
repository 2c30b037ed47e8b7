"""The shared data module on real Fashion-MNIST, and every other source built locally (no network)."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from genbench.data import FASHION_MNIST_CLASSES, ImageDataModule, SourceSpec, load_splits
from genbench.data import idx
from genbench.errors import GenbenchError

needs_fmnist = pytest.mark.skipif(idx.find_root(None) is None, reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture()
def cache_dir(tmp_path_factory) -> str:
    """The session's prepared-data cache when the suite sets one, so Fashion-MNIST is prepared once."""
    shared = os.environ.get("GENBENCH_CACHE")
    return str(Path(shared) / "data") if shared else str(tmp_path_factory.mktemp("cache"))


def fake_trainer(training: bool = True):
    return SimpleNamespace(training=training, strategy=SimpleNamespace(root_device=torch.device("cpu")))


@needs_fmnist
def test_fashion_mnist_is_complete_and_real(cache_dir):
    splits, _ = load_splits(SourceSpec(source="fashion_mnist", image_size=28), cache_dir)
    assert len(splits["train"]) == 60000 and len(splits["test"]) == 10000
    assert splits["train"].features["label"].names == FASHION_MNIST_CLASSES
    dm = ImageDataModule(cache_dir=cache_dir, val_size=1000)
    dm.setup()
    train, val, test = dm.images("train"), dm.images("val"), dm.images("test")
    assert train.dtype == torch.uint8 and tuple(train.shape[1:]) == (1, 28, 28)
    assert len(train) + len(val) == 60000 and len(test) == 10000
    labels = dm.labels("test")
    assert labels.min() == 0 and labels.max() == 9 and len(labels.unique()) == 10
    assert dm.class_names[7] == "Sneaker" and dm.num_classes == 10
    # Real pixels, not zeros: Fashion-MNIST's mean intensity is about 73/255.
    assert 60 < test.float().mean() < 85


@needs_fmnist
def test_subset_keeps_the_first_training_images_and_batches_are_scaled(cache_dir):
    everything = ImageDataModule(cache_dir=cache_dir, val_size=0)  # no validation split: the source's own order
    small = ImageDataModule(cache_dir=cache_dir, seed=3, subset=100, batch_size=32)
    assert torch.equal(small.images("train"), everything.images("train")[:100])
    images, labels = small.on_after_batch_transfer(next(iter(small.train_dataloader())), 0)
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.min() == -1
    assert len(small.train_dataloader()) == 100 // 32  # drop_last: every training batch is full


@needs_fmnist
def test_validation_split_is_seeded(cache_dir):
    a, b, c = (ImageDataModule(cache_dir=cache_dir, seed=s, val_size=500) for s in (0, 0, 1))
    assert torch.equal(a.images("val"), b.images("val"))
    assert not torch.equal(a.images("val"), c.images("val"))
    assert torch.equal(a.images("test"), c.images("test"))  # the reference never moves
    # ...so its fingerprint (feature caches, metrics.json's reference) is shared by every seed, while the val
    # split's is not, and val_size counts as much as the seed
    assert a.split_fingerprint("test") == c.split_fingerprint("test")
    assert a.split_fingerprint("val") == b.split_fingerprint("val") != c.split_fingerprint("val")
    d = ImageDataModule(cache_dir=cache_dir, seed=0, val_size=600)
    assert d.split_fingerprint("val") != a.split_fingerprint("val")


@needs_fmnist
def test_on_device_path_gives_the_same_batches(cache_dir):
    def batches(on_device: bool):
        dm = ImageDataModule(cache_dir=cache_dir, seed=7, subset=640, batch_size=64, flip=True, on_device=on_device)
        dm.trainer = fake_trainer()
        loader = dm.train_dataloader()
        assert isinstance(loader, torch.utils.data.DataLoader) != on_device
        return [dm.on_after_batch_transfer(batch, 0) for _, batch in zip(range(4), loader)]

    for (xa, ya), (xb, yb) in zip(batches(False), batches(True)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _rgb_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _hub_like(n_train: int = 40, n_test: int = 10) -> datasets.DatasetDict:
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    make = lambda n, s: datasets.Dataset.from_dict(  # noqa: E731
        {"img": _rgb_images(n, 40, s), "label": [i % 2 for i in range(n)]}, features=features
    )
    return datasets.DatasetDict(train=make(n_train, 0), test=make(n_test, 1))


def test_hf_dataset_saved_to_disk(tmp_path, cache_dir):
    _hub_like().save_to_disk(str(tmp_path / "cifar_like"))
    dm = ImageDataModule(source="hf", name=str(tmp_path / "cifar_like"), image_key="img", image_size=32,
                         val_size=4, cache_dir=cache_dir)  # fmt: skip
    assert dm.images("train").shape == (36, 3, 32, 32) and dm.images("test").shape == (10, 3, 32, 32)
    assert dm.class_names == ["cat", "dog"] and dm.labels("test").tolist()[:4] == [0, 1, 0, 1]


def test_hf_parquet_files_and_grayscale_conversion(tmp_path, cache_dir):
    folder = tmp_path / "parquet"
    folder.mkdir()
    dd = _hub_like()
    for split, ds in dd.items():
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    dm = ImageDataModule(source="hf", name=str(folder), image_key="img", image_size=28, channels=1, val_size=0,
                         cache_dir=cache_dir)  # fmt: skip
    assert dm.images("train").shape == (40, 1, 28, 28) and dm.class_names == ["cat", "dog"]


def test_hf_without_test_split_carves_a_seeded_one(tmp_path, cache_dir):
    datasets.DatasetDict(train=_hub_like(50, 1)["train"]).save_to_disk(str(tmp_path / "only_train"))
    dm = ImageDataModule(source="hf", name=str(tmp_path / "only_train"), image_key="img", image_size=32, val_size=0,
                         cache_dir=cache_dir)  # fmt: skip
    assert len(dm.images("train")) + len(dm.images("test")) == 50 and len(dm.images("test")) == 10


def _write_folder(root: Path, classes: dict[str, int], size: int = 36, mode: str = "RGB") -> None:
    for name, count in classes.items():
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(_rgb_images(count, size, seed=len(name) + size)):
            image.convert(mode).save(folder / f"{i}.png")


def test_imagefolder_with_class_subfolders(tmp_path, cache_dir):
    _write_folder(tmp_path / "pets", {"cat": 12, "dog": 13})
    dm = ImageDataModule(source="imagefolder", root=str(tmp_path / "pets"), image_size=32, val_size=0,
                         cache_dir=cache_dir)  # fmt: skip
    n = len(dm.images("train")) + len(dm.images("test"))
    assert n == 25 and dm.class_names == ["cat", "dog"] and dm.images("train").shape[1:] == (3, 32, 32)


def test_imagefolder_without_classes_has_no_labels(tmp_path, cache_dir):
    _write_folder(tmp_path / "flat", {"": 20}, mode="L")
    dm = ImageDataModule(source="imagefolder", root=str(tmp_path / "flat"), image_size=28, val_size=0,
                         cache_dir=cache_dir)  # fmt: skip
    assert dm.class_names is None and dm.num_classes is None and dm.images("train").shape[1] == 1


# ------------------------------------------------------------------ preflight: one clear error each


def test_missing_root_is_refused(cache_dir):
    with pytest.raises(GenbenchError, match="does not exist"):
        ImageDataModule(root="/nonexistent", cache_dir=cache_dir).setup()


@needs_fmnist
def test_truncated_idx_file_is_refused(tmp_path, cache_dir):
    for names in idx.FILES.values():
        for name in names:
            shutil.copy(idx.DEBIAN_ROOT / name, tmp_path / name)
    damaged = tmp_path / "train-labels-idx1-ubyte.gz"
    raw = gzip.open(damaged).read()
    with gzip.open(damaged, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(GenbenchError, match="truncated"):
        ImageDataModule(root=str(tmp_path), cache_dir=cache_dir).setup()
    damaged.write_bytes(b"not gzip at all")
    with pytest.raises(GenbenchError, match="cannot read IDX"):
        ImageDataModule(root=str(tmp_path), cache_dir=cache_dir).setup()


def test_mixed_sizes_and_channels_are_refused(tmp_path, cache_dir):
    _write_folder(tmp_path / "mixed", {"a": 6}, size=36)
    _write_folder(tmp_path / "mixed", {"b": 6}, size=40)
    with pytest.raises(GenbenchError, match="mixed image sizes"):
        ImageDataModule(source="imagefolder", root=str(tmp_path / "mixed"), image_size=32, cache_dir=cache_dir).setup()
    _write_folder(tmp_path / "modes", {"a": 6}, mode="L")
    _write_folder(tmp_path / "modes", {"b": 6}, mode="RGB")
    with pytest.raises(GenbenchError, match="channel"):
        ImageDataModule(source="imagefolder", root=str(tmp_path / "modes"), image_size=32, cache_dir=cache_dir).setup()


def test_unusable_image_size_and_unknown_dataset_are_refused(tmp_path, cache_dir, monkeypatch):
    with pytest.raises(GenbenchError, match="image_size=50"):
        ImageDataModule(image_size=50, cache_dir=cache_dir).setup()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import time, so patch it too
    with pytest.raises(GenbenchError, match="cannot load HF dataset 'no-such-user/no-such-dataset'"):
        ImageDataModule(source="hf", name="no-such-user/no-such-dataset", cache_dir=cache_dir).setup()


def test_no_fashion_mnist_anywhere_names_all_three_ways(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(idx, "DEBIAN_ROOT", tmp_path / "absent")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(GenbenchError) as info:
        ImageDataModule(cache_dir=str(tmp_path / "fresh_cache")).setup()
    message = str(info.value)
    assert "data.root" in message and "dataset-fashion-mnist" in message and "zalando-datasets/fashion_mnist" in message
