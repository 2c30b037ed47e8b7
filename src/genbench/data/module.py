"""``ImageDataModule``: the one data module every family trains on, unchanged."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from genbench.data.order import (
    DeviceBatches, ShardedBatches, TrainOrder, evaluation_seed, rank_share, seed_global_rng, seeded_generator, training_seed,
)  # fmt: skip
from genbench.data.sources import SourceSpec, load_splits
from genbench.errors import GenbenchError
from genbench.schema.types import Flag, NonNegativeInt, PathText, PositiveInt, Seed, Text

log = logging.getLogger(__name__)


class ImageDataModule(pl.LightningDataModule):
    """Images as uint8 (N, C, H, W) tensors; batches are scaled to [-1, 1] (and flipped) after transfer.

    ``train`` is the source's train split minus a seeded validation split or, with ``subset=N``, the source's first
    N training images (the same N for every seed; validation is then drawn from the images after them); ``test``
    stays separate as the evaluation reference. Training batches follow :class:`TrainOrder`, a pure function of
    (seed, epoch, batch index); the number of batches trained is this module's checkpointed state, so a resumed run
    goes on with the next batch.

    ``batch_size`` is the global batch: under DDP each of ``world_size`` ranks trains ``batch_size / world_size``
    images of it per step. The training randomness of global batch ``k`` is a function of (seed, k) and the rank:
    the flip mask is drawn for the whole global batch (each rank flips its slice, so flips do not depend on the number
    of ranks), and the global torch RNG the model's step draws from is reseeded from (seed, k, rank). Test batch
    ``j`` reseeds it from (seed, j), so a test metric's draws do not depend on the number of ranks either.
    """

    def __init__(
        self,
        source: Literal["fashion_mnist", "hf", "imagefolder"] = "fashion_mnist",
        root: PathText | None = None,
        name: Text | None = None,
        image_key: Text = "image",
        label_key: Text | None = "label",
        train_split: Text = "train",
        test_split: Text = "test",
        image_size: PositiveInt = 28,
        channels: Literal[1, 3] | None = None,
        resize: Literal["auto", "pad", "resize"] = "auto",
        subset: PositiveInt | None = None,
        val_size: NonNegativeInt = 1000,
        batch_size: PositiveInt = 128,
        num_workers: NonNegativeInt = 0,
        flip: Flag = False,
        on_device: Flag = False,
        seed: Seed = 0,
        cache_dir: PathText = "~/.cache/genbench/data",
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
        self.train_batches = 0  # training batches handed to the model so far, over all sessions of the run
        self.eval_batches = 0

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
        val_idx, fit_idx = self._split_indices(len(train_images))
        n_val = len(val_idx)
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

    def _split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation and training indices into the source's train split, each in the source's order.

        Without a subset, validation is a seeded draw and training the rest. With ``subset=N`` training is the first
        N images whatever the seed, and validation a seeded draw from the images after them, so the two never meet.
        """
        n_val = min(self.val_size, n // 10)  # so that small folders still train on nine tenths
        if n_val < self.val_size:
            log.warning("data.val_size=%d: holding out %d validation images, a tenth of the %d in the train split",
                        self.val_size, n_val, n)  # fmt: skip
        if self.subset is None:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            return perm[:n_val].sort().values, perm[n_val:].sort().values
        subset = int(self.subset)
        if subset + n_val > n:
            raise GenbenchError(f"data.subset={subset} leaves fewer than the {n_val} validation images out of the "
                                f"{n} training images; use at most data.subset={n - n_val}, or data.subset=null "
                                "for all of them")  # fmt: skip
        rest = torch.randperm(n - subset, generator=torch.Generator().manual_seed(self.seed))[:n_val]
        return (rest + subset).sort().values, torch.arange(subset)

    # ------------------------------------------------------------------ facts
    def _need(self) -> None:
        if not self._splits:
            self.setup()

    def split_fingerprint(self, split: str) -> str:
        """What a split's images depend on, for feature caches and metrics' reference names.

        The test split depends only on the source (it is never reshuffled), so every seed of a sweep shares one
        reference, and so does a subset's train split (the source's first N images); otherwise train and val move
        with the seed, val_size and subset.
        """
        self._need()
        if split == "test":
            return f"{self._source_key}-test"
        if split == "train" and self.subset is not None:
            return f"{self._source_key}-first{int(self.subset)}-train"
        return f"{self.fingerprint}-{split}"

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

    def _rank(self) -> tuple[int, int]:
        """(this process's rank, number of ranks): (0, 1) without a trainer."""
        return getattr(self.trainer, "global_rank", 0), getattr(self.trainer, "world_size", 1)

    def global_batch(self, n: int | None = None) -> int:
        """Images per training step over all ranks: ``batch_size``, or a split of ``n`` images whole when smaller
        (rounded down to a multiple of the ranks). A ``batch_size`` the ranks cannot share is refused."""
        rank, world = self._rank()
        rank_share(self.batch_size, world)
        n = len(self._splits["train"][0]) if n is None else n
        return self.batch_size if n >= self.batch_size else max(world, n - n % world)

    def _batches(self, split: str, train: bool):
        self._need()
        tensors = self._tensors(split)
        n = len(tensors[0])
        rank, world = self._rank()
        if n < world:
            raise GenbenchError(f"the {split} split has {n} images, fewer than the {world} ranks")
        if train:
            sampler = TrainOrder(n, self.global_batch(n), self.seed, lambda: self.train_batches, rank, world)
        else:
            sampler = ShardedBatches(n, min(self.batch_size, n), rank, world)
            self.eval_batches = 0  # evaluation batches of this pass handed to the model on this rank
        if self.on_device:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            return DeviceBatches(tuple(t.to(device) for t in tensors), sampler)
        # Each sampled item is a whole batch of indices (batch_size=None): TensorDataset slices it in one go.
        return DataLoader(
            TensorDataset(*tensors), sampler=sampler, batch_size=None, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed),  # its worker seed draw must not touch the global RNG
        )  # fmt: skip

    def train_dataloader(self):
        return self._batches("train", train=True)

    def val_dataloader(self):
        return self._batches("val", train=False)

    def test_dataloader(self):
        return self._batches("test", train=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        images = images.float().div(127.5).sub(1.0)
        if self.trainer is not None and self.trainer.training:  # called once per batch the model trains on
            rank, _ = self._rank()
            if self.flip:  # a mask of its own per batch index: the same on either path, and after a resume
                share = images.shape[0]
                mask = torch.rand(self.global_batch(), generator=seeded_generator(self.seed, self.train_batches, 1))
                draws = mask[rank * share : (rank + 1) * share]
                images = torch.where((draws < 0.5).to(images.device)[:, None, None, None], images.flip(-1), images)
            seed_global_rng(training_seed(self.seed, self.train_batches, rank), images.device)
            self.train_batches += 1
        elif self.trainer is not None and self.trainer.testing:  # a test ELBO's draws: the batch's, whatever the rank
            rank, world = self._rank()
            seed_global_rng(evaluation_seed(self.seed, self.eval_batches * world + rank), images.device)
            self.eval_batches += 1
        return images, labels

    # ------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict:
        """Lightning stores this in every checkpoint and restores it before asking for the train loader."""
        return {"train_batches": self.train_batches}

    def load_state_dict(self, state: dict) -> None:
        self.train_batches = int(state["train_batches"])
