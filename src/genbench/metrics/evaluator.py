"""The one evaluator: generated images against a reference, on one feature extractor.

:func:`evaluate_images` scores uint8 images; :func:`evaluate_model` samples a model through its ``sample``
interface first. Both return the ``metrics.json`` record: the contract's fields first, then what explains them
(adapted KID subset size and IS splits, memorization threshold, cache hits, timings).
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from genbench.errors import GenbenchError
from genbench.metrics.cache import DEFAULT_DIR, FeatureCache
from genbench.metrics.extractors import Extractor, build_extractor
from genbench.metrics.fidelity import score
from genbench.metrics.memorization import memorization

log = logging.getLogger(__name__)

CONTRACT_FIELDS = (
    "extractor", "extractor_sha256", "n_real", "n_fake", "reference", "fid", "kid_mean", "kid_std", "is_mean", "is_std",
    "precision", "recall", "memorization", "sampler", "sampler_steps", "sample_seconds_per_1k",
)  # fmt: skip
SPLITS = ("train", "val", "test")


@dataclass
class MetricsConfig:
    """``metrics.*`` (conf/metrics/default.yaml holds the same defaults, with comments)."""

    extractor: str = "auto"
    inception_weights: str | None = None
    extractor_weights: str | None = None
    n_samples: int = 10000
    reference_split: str = "test"
    n_reference: int | None = None
    memorization: bool = True
    heldout_split: str = "test"
    memorization_percentile: float = 5.0
    batch_size: int = 250
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    isc_splits: int = 10
    prc_neighborhood: int = 3
    seed: int = 0
    device: str = "auto"
    cache_dir: str | None = DEFAULT_DIR

    @classmethod
    def from_cfg(cls, cfg: "MetricsConfig | DictConfig | dict | None") -> "MetricsConfig":
        if isinstance(cfg, MetricsConfig):
            return cfg
        values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise GenbenchError(f"unknown metrics keys {sorted(unknown)} (expected some of {[f.name for f in fields(cls)]})")
        config = cls(**values)
        for split in (config.reference_split, config.heldout_split):
            if split not in SPLITS:
                raise GenbenchError(f"metrics split '{split}' is not one of {', '.join(SPLITS)}")
        if config.n_samples < 1 or config.batch_size < 1:
            raise GenbenchError("metrics.n_samples and metrics.batch_size must be positive")
        return config

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.device)
        except RuntimeError as exc:
            raise GenbenchError(f"metrics.device={self.device!r} is not a torch device (expected auto, cpu or cuda)") from exc


@dataclass
class ImageSet:
    """Real images to compare against, loaded lazily; ``cache_fields`` identify them for the feature cache."""

    description: str
    channels: int
    load: Callable[[], torch.Tensor]
    cache_fields: dict | None = None


def images_from_tensor(images: torch.Tensor, description: str = "tensor") -> ImageSet:
    """An in-memory uint8 (N, C, H, W) set, cached under the sha256 of its pixels."""
    if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.dim() == 4):
        raise GenbenchError(f"expected uint8 images (N, C, H, W), got {getattr(images, 'dtype', type(images))}")
    digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
    fields_ = {"content_sha256": digest, "shape": list(images.shape)}
    return ImageSet(description, int(images.shape[1]), lambda: images, fields_)


def images_from_path(path: str | Path) -> ImageSet:
    """A folder of PNGs or an .npz holding ``images``."""
    from genbench.imageio import load_images

    path = Path(path).expanduser().resolve()
    images = load_images(path)
    return images_from_tensor(images, str(path))


def images_from_datamodule(datamodule, split: str, n: int | None = None) -> ImageSet:
    """The first ``n`` (all when None) images of a split of a set-up :class:`ImageDataModule`."""
    if split not in SPLITS:
        raise GenbenchError(f"split '{split}' is not one of {', '.join(SPLITS)}")

    def load() -> torch.Tensor:
        images = datamodule.images(split)
        if n is not None and n > len(images):
            raise GenbenchError(f"asked for {n} {split} images as reference, the split holds {len(images)}")
        return images if n is None else images[:n]

    channels = datamodule.channels  # first: sets the data module up, which gives it its fingerprint
    if hasattr(datamodule, "split_fingerprint"):
        fingerprint = datamodule.split_fingerprint(split)
    else:  # a plain data module with one fingerprint for all its splits
        fingerprint = getattr(datamodule, "fingerprint", "")
    count = len(datamodule.images(split))  # guards against split settings the fingerprint may not cover
    fields_ = {"data": fingerprint, "split": split, "n": n, "count": count, "image_size": datamodule.image_size}
    fields_ = fields_ if fingerprint else None
    return ImageSet(f"{split} split ({fingerprint or 'unfingerprinted data'})", channels, load, fields_)


def progress_bar() -> Progress:
    """Rich progress on stderr (stdout carries the JSON record), drawn only on a terminal."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )  # fmt: skip


def reference_features(
    extractor: Extractor,
    images: ImageSet,
    cache: FeatureCache,
    config: MetricsConfig,
    progress: Progress | None,
    what: str,
    memo: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Features of a real image set, from ``memo`` (this evaluation), the disk cache, or the extractor."""

    def compute() -> dict[str, torch.Tensor]:
        loaded = images.load()
        log.info("extracting %s features of %d %s images", extractor.name, len(loaded), what)
        return extractor.features(loaded, config.batch_size, progress, f"{what} features")

    if images.cache_fields is None:
        return compute()
    key = {
        **images.cache_fields,
        "extractor": extractor.name,
        "weights_sha256": extractor.weights_sha256,
        "layers": extractor.layers,
    }
    memo_key = repr(sorted(key.items()))
    if memo is not None and memo_key in memo:
        return memo[memo_key]
    features = cache.get_or_compute(key, compute, f"{what} features")
    if memo is not None:
        memo[memo_key] = features
    return features


def evaluate_images(
    fake: torch.Tensor,
    reference: torch.Tensor | str | Path | ImageSet,
    cfg_metrics: MetricsConfig | DictConfig | dict | None = None,
    *,
    train: ImageSet | torch.Tensor | None = None,
    heldout: ImageSet | torch.Tensor | None = None,
    progress: Progress | None = None,
) -> dict:
    """Metrics of generated uint8 images (N, C, H, W) against ``reference`` (images, a path, or an :class:`ImageSet`).

    Memorization needs ``train`` (what the model was trained on) and ``heldout`` (real images it never saw); it is
    None without them or with ``metrics.memorization=false``.
    """
    config = MetricsConfig.from_cfg(cfg_metrics)
    as_set = lambda x, name: x if isinstance(x, ImageSet) or x is None else (  # noqa: E731
        images_from_tensor(x, name) if torch.is_tensor(x) else images_from_path(x))
    reference, train, heldout = as_set(reference, "reference"), as_set(train, "train"), as_set(heldout, "heldout")
    if not (torch.is_tensor(fake) and fake.dtype == torch.uint8 and fake.dim() == 4):
        raise GenbenchError(f"generated images must be uint8 (N, C, H, W), got {getattr(fake, 'dtype', type(fake))}")
    extractor = build_extractor(
        config.extractor, reference.channels, config.torch_device(), config.inception_weights, config.extractor_weights
    )
    log.info("extractor %s (weights sha256 %s...) on %s", extractor.name, extractor.weights_sha256[:12], extractor.device)
    cache, memo = FeatureCache(config.cache_dir), {}
    started = time.perf_counter()
    with nullcontext(progress) if progress is not None else progress_bar() as bar:
        fake_features = extractor.features(fake, config.batch_size, bar, "generated features")
        real_features = reference_features(extractor, reference, cache, config, bar, "reference", memo)
        record = {
            "extractor": extractor.name,
            "extractor_sha256": extractor.weights_sha256,
            "n_real": len(real_features[extractor.feature_layer]),
            "n_fake": len(fake),
            "reference": reference.description,
        }
        record.update(
            score(
                fake_features, real_features, extractor.feature_layer, extractor.isc_layer, config.kid_subsets,
                config.kid_subset_size, config.isc_splits, config.prc_neighborhood, seed=2020 + config.seed,
            )  # fmt: skip
        )
        record["memorization"] = None
        if config.memorization and train is not None and heldout is not None:
            layer = extractor.feature_layer
            train_features = reference_features(extractor, train, cache, config, bar, "train", memo)[layer]
            heldout_features = reference_features(extractor, heldout, cache, config, bar, "held-out", memo)[layer]
            record.update(
                memorization(fake_features[layer], train_features, heldout_features, config.memorization_percentile)
            )
    record.update(
        sampler=None, sampler_steps=None, sample_seconds_per_1k=None, score_seconds=round(time.perf_counter() - started, 2),
        cache_hits=cache.hits, cache_misses=cache.misses, metrics_config=asdict(config),
    )  # fmt: skip
    return {k: record[k] for k in CONTRACT_FIELDS} | {k: v for k, v in record.items() if k not in CONTRACT_FIELDS}


def as_sampler_kwargs(sampler: DictConfig | dict | None) -> dict:
    """``cfg.sampler`` (name, steps, eta, guidance_scale) as ``model.sample`` keyword arguments."""
    if sampler is None:
        return {}
    kwargs = OmegaConf.to_container(sampler, resolve=True) if isinstance(sampler, DictConfig) else dict(sampler)
    if "name" in kwargs:
        kwargs["sampler"] = kwargs.pop("name")
    return kwargs


@torch.no_grad()
def sample_images(
    model, n: int, batch_size: int, seed: int, sampler_kwargs: dict, device: torch.device, progress: Progress | None = None
) -> tuple[torch.Tensor, float]:
    """``n`` uint8 samples (balanced labels for conditional models) and the seconds spent sampling."""
    from genbench.imageio import to_uint8

    generator = torch.Generator(device=device).manual_seed(seed)
    labels = None if model.num_classes is None else torch.arange(n, device=device) % model.num_classes
    task = progress.add_task(f"sampling {model.family}", total=n) if progress is not None else None
    batches = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        batch_labels = None if labels is None else labels[start : start + count]
        batches.append(to_uint8(model.sample(count, labels=batch_labels, generator=generator, **sampler_kwargs)))
        if progress is not None:
            progress.advance(task, count)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return torch.cat(batches), time.perf_counter() - started


def evaluate_model(model, cfg_metrics, datamodule, sampler_kwargs: DictConfig | dict | None = None) -> dict:
    """Sample ``metrics.n_samples`` images from ``model`` and score them against ``datamodule``'s reference split.

    Memorization compares with the model's training images (``datamodule``'s train split, honouring
    ``data.subset``) and ``metrics.heldout_split``.
    """
    config = MetricsConfig.from_cfg(cfg_metrics)
    device = config.torch_device()
    kwargs = as_sampler_kwargs(sampler_kwargs)
    model = model.to(device).eval()
    log.info("sampling %d images from the %s model (%s) on %s", config.n_samples, model.family, kwargs or "-", device)
    with progress_bar() as bar:
        fake, seconds = sample_images(model, config.n_samples, config.batch_size, config.seed, kwargs, device, bar)
        record = evaluate_images(
            fake,
            images_from_datamodule(datamodule, config.reference_split, config.n_reference),
            config,
            train=images_from_datamodule(datamodule, "train"),
            heldout=images_from_datamodule(datamodule, config.heldout_split),
            progress=bar,
        )
    # Only samplers with options (diffusion's) are recorded; GAN and VAE sample in one pass whatever is passed.
    if getattr(model, "family", None) == "diffusion" and kwargs:
        record.update(sampler=kwargs.get("sampler"), sampler_steps=kwargs.get("steps"))
    record.update(sample_seconds_per_1k=round(seconds / config.n_samples * 1000, 3), family=model.family, device=str(device))
    return record
