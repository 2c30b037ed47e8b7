"""``ImageDataModule``: the one data module every family trains on, unchanged."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from genbench.data.sources import SourceSpec, load_splits
from genbench.errors import GenbenchError

log = logging.getLogger(__name__)


class DeviceBatches:
    """Batches sliced from tensors already on the accelerator: no workers, no host-device copies.

    It walks the same ``BatchSampler`` the DataLoader path uses, so both paths give the same
    batches for the same seed.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_sampler: BatchSampler):
        self.tensors = tensors
        self.batch_sampler = batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        device = self.tensors[0].device
        for indices in self.batch_sampler:
            index = torch.as_tensor(indices, device=device)
            yield [t.index_select(0, index) for t in self.tensors]


class ImageDataModule(pl.LightningDataModule):
    """Images as uint8 (N, C, H, W) tensors; batches are scaled to [-1, 1] (and flipped) after transfer.

    ``train`` is the source's train split minus a seeded validation split, cut to its first
    ``subset`` images; ``test`` stays separate as the evaluation reference.
    """

    def __init__(
        self,
        source: str = "fashion_mnist",
        root: str | None = None,
        name: str | None = None,
        image_key: str = "image",
        label_key: str | None = "label",
        train_split: str = "train",
        test_split: str = "test",
        image_size: int = 28,
        channels: int | None = None,
        resize: str = "auto",
        subset: int | None = None,
        val_size: int = 1000,
        batch_size: int = 128,
        num_workers: int = 0,
        flip: bool = False,
        on_device: bool = False,
        seed: int = 0,
        cache_dir: str = "~/.cache/genbench/data",
    ):
        super().__init__()
        if subset is not None and int(subset) < 1:
            raise GenbenchError(f"data.subset={subset}; expected a positive number of images or null")
        if batch_size < 1:
            raise GenbenchError(f"data.batch_size={batch_size}; expected a positive integer")
        self.spec = SourceSpec(
            source=source, root=root, name=name, image_key=image_key, label_key=label_key, train_split=train_split,
            test_split=test_split, image_size=int(image_size), channels=channels, resize=resize,
        )  # fmt: skip
        self.subset, self.val_size, self.batch_size = subset, val_size, batch_size
        self.num_workers, self.flip, self.on_device, self.seed = num_workers, flip, on_device, seed
        self.cache_dir = cache_dir
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.class_names: list[str] | None = None
        self.source_sizes: dict[str, int] = {}
        self.fingerprint = ""
        self._flip_generator = torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------ loading
    def prepare_data(self) -> None:
        load_splits(self.spec, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        prepared, key = load_splits(self.spec, self.cache_dir)
        arrays = {}
        for split, ds in prepared.items():
            images = torch.from_numpy(ds.select_columns(["image"]).with_format("numpy", dtype=np.uint8)[:]["image"])
            labels = None
            if "label" in ds.column_names:
                labels = torch.from_numpy(ds.select_columns(["label"]).with_format("numpy")[:]["label"]).long()
            arrays[split] = (images, labels)
            self.source_sizes[split] = len(ds)
        if "label" in prepared["train"].column_names:
            self.class_names = list(prepared["train"].features["label"].names)
        train_images, train_labels = arrays["train"]
        n = len(train_images)
        n_val = min(self.val_size, n // 10)
        # Seeded permutation for the split, then keep the original order inside each part.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        val_idx, fit_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
        if self.subset is not None:
            fit_idx = fit_idx[: int(self.subset)]
        pick = lambda t, i: None if t is None else t[i]  # noqa: E731
        self._splits = {
            "train": (train_images[fit_idx], pick(train_labels, fit_idx)),
            "val": (train_images[val_idx], pick(train_labels, val_idx)),
            "test": arrays["test"],
        }
        self._source_key = f"{self.spec.source}-{key}"
        self.fingerprint = f"{self._source_key}-seed{self.seed}-val{self.val_size}-subset{self.subset}"
        log.info(
            "data %s: train %d, val %d, test %d images of %s, classes: %s",
            self.spec.source, len(fit_idx), n_val, len(arrays["test"][0]), tuple(train_images.shape[1:]), self.class_names,
        )  # fmt: skip

    # ------------------------------------------------------------------ facts
    def _need(self) -> None:
        if not self._splits:
            self.setup()

    def split_fingerprint(self, split: str) -> str:
        """What a split's images depend on, for feature caches and metrics' reference names.

        The test split depends only on the source (it is never reshuffled), so every seed of a sweep shares one
        reference; train and val move with the seed, val_size and subset.
        """
        self._need()
        return f"{self._source_key}-test" if split == "test" else f"{self.fingerprint}-{split}"

    def images(self, split: str) -> torch.Tensor:
        self._need()
        if split not in self._splits:
            raise GenbenchError(f"unknown split '{split}'; expected train, val or test")
        return self._splits[split][0]

    def labels(self, split: str) -> torch.Tensor | None:
        self._need()
        return self._splits[split][1]

    @property
    def num_classes(self) -> int | None:
        self._need()
        return None if self.class_names is None else len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images("train").shape[1])

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images("train").shape[1:])  # type: ignore[return-value]

    # ------------------------------------------------------------------ loaders
    def _tensors(self, split: str) -> tuple[torch.Tensor, ...]:
        images, labels = self._splits[split]
        if labels is None:
            labels = torch.full((len(images),), -1, dtype=torch.long)  # -1: unlabelled
        return images, labels

    def _batches(self, split: str, shuffle: bool):
        self._need()
        tensors = self._tensors(split)
        n = len(tensors[0])
        if n == 0:
            raise GenbenchError(f"the {split} split is empty")
        if shuffle:
            # A fixed generator: the same seed walks the same batches, on either path.
            sampler = RandomSampler(range(n), generator=torch.Generator().manual_seed(self.seed))
        else:
            sampler = SequentialSampler(range(n))
        batch_sampler = BatchSampler(sampler, batch_size=min(self.batch_size, n), drop_last=shuffle)
        if self.on_device:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            return DeviceBatches(tuple(t.to(device) for t in tensors), batch_sampler)
        return DataLoader(
            TensorDataset(*tensors), batch_sampler=batch_sampler, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
        )  # fmt: skip

    def train_dataloader(self):
        return self._batches("train", shuffle=True)

    def val_dataloader(self):
        return self._batches("val", shuffle=False)

    def test_dataloader(self):
        return self._batches("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        images = images.float().div(127.5).sub(1.0)
        if self.flip and self.trainer is not None and self.trainer.training:
            # Flip masks come from the module's own generator so both loader paths flip the same images.
            flip = (torch.rand(images.shape[0], generator=self._flip_generator) < 0.5).to(images.device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images, labels
