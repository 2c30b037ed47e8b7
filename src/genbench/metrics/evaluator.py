"""The one evaluator: generated images against a reference, on one feature extractor, under one protocol.

An evaluation is planned first (:func:`plan_evaluation`, :func:`plan_model_evaluation`): settings checked, the
sampler settings asked of the model, the extractor built, the reference named, and so the protocol id known
(:mod:`genbench.metrics.protocol`) before any image is sampled or scored, so commands can log it and check where
they will write. :func:`score_images` and :func:`run_model_evaluation` then do the work. :func:`evaluate_images` and
:func:`evaluate_model` do both. The result is the ``metrics.json`` record: the contract's fields first, then the scores added since
(``fid_inf``, ``is_inf``, ``density``, ``coverage``: :mod:`genbench.metrics.fidelity`) and what explains them all
(protocol fields, adapted KID subset size and IS splits, memorization threshold, cache hits, timings).
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from genbench.errors import GenbenchError
from genbench.imageio import Conversion, check_not_constant
from genbench.metrics.cache import FeatureCache
from genbench.metrics.config import SPLITS, MetricsConfig, check_counts
from genbench.metrics.extractors import FEATURE_BATCH, Extractor, build_extractor
from genbench.metrics.fidelity import knn_radii, score
from genbench.metrics.memorization import memorization, nearest_distances
from genbench.metrics.protocol import Protocol, make_protocol, protocol_fields, reference_identity
from genbench.noise import IndexedNoise
from genbench.training.flops import sampling_flops

log = logging.getLogger(__name__)

CONTRACT_FIELDS = (
    "protocol", "extractor", "extractor_sha256", "n_real", "n_fake", "reference", "fid", "kid_mean", "kid_std", "is_mean",
    "is_std", "precision", "recall", "memorization", "sampler", "sampler_steps", "sample_seconds_per_1k",
)  # fmt: skip


@dataclass
class ImageSet:
    """Real images to compare against, loaded lazily; ``cache_fields`` identify them for the feature cache."""

    description: str
    channels: int
    load: Callable[[], torch.Tensor]
    cache_fields: dict | None = None
    count: int | None = None  # images it holds (known without loading them)
    shape: tuple[int, ...] | None = None  # (C, H, W) of each image, when known without loading them
    conversions: list[Conversion] = field(default_factory=list)  # what reading the files changed


def images_from_tensor(images: torch.Tensor, description: str = "tensor") -> ImageSet:
    """An in-memory uint8 (N, C, H, W) set, cached under the sha256 of its pixels."""
    if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.dim() == 4):
        raise GenbenchError(f"expected uint8 images (N, C, H, W), got {getattr(images, 'dtype', type(images))}")
    digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
    fields_ = {"content_sha256": digest, "shape": list(images.shape)}
    return ImageSet(description, int(images.shape[1]), lambda: images, fields_, len(images), tuple(images.shape[1:]))


def images_from_path(path: str | Path) -> ImageSet:
    """A folder of PNGs or an .npz holding ``images``, with what reading them changed."""
    from genbench.imageio import load_images

    path = Path(path).expanduser().resolve()
    images, conversions = load_images(path)
    image_set = images_from_tensor(images, str(path))
    image_set.conversions = conversions
    return image_set


def images_from_datamodule(datamodule, split: str, n: int | None = None) -> ImageSet:
    """The first ``n`` (all when None) images of a split of a set-up :class:`ImageDataModule`."""
    if split not in SPLITS:
        raise GenbenchError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    channels = datamodule.channels  # first: sets the data module up, which gives it its fingerprint
    split_images = datamodule.images(split)
    count = len(split_images)  # guards against split settings the fingerprint may not cover
    if n is not None and n > count:
        raise GenbenchError(f"asked for {n} {split} images as reference, the split holds {count}")

    def load() -> torch.Tensor:
        images = datamodule.images(split)
        return images if n is None else images[:n]

    if hasattr(datamodule, "split_fingerprint"):
        fingerprint = datamodule.split_fingerprint(split)
    else:  # a plain data module with one fingerprint for all its splits
        fingerprint = getattr(datamodule, "fingerprint", "")
    fields_ = {"data": fingerprint, "split": split, "n": n, "count": count, "image_size": datamodule.image_size}
    fields_ = fields_ if fingerprint else None
    description = f"{split} split ({fingerprint or 'unfingerprinted data'})"
    return ImageSet(description, channels, load, fields_, count if n is None else n, tuple(split_images.shape[1:]))


def progress_bar() -> Progress:
    """Rich progress on stderr (stdout carries the JSON record), drawn only on a terminal."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )  # fmt: skip


def feature_key(extractor: Extractor, images: ImageSet) -> dict | None:
    """The feature cache's key of ``images``' features (None: the images are not identified, so not cached)."""
    if images.cache_fields is None:
        return None
    return {
        **images.cache_fields,
        "extractor": extractor.name,
        "weights_sha256": extractor.weights_sha256,
        "layers": extractor.layers,
        "feature_batch": FEATURE_BATCH,  # fp32 kernels may round differently per batch: cached equals fresh
    }


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
        return extractor.features(loaded, progress, f"{what} features")

    key = feature_key(extractor, images)
    if key is None:
        return compute()
    memo_key = repr(sorted(key.items()))
    if memo is not None and memo_key in memo:
        return memo[memo_key]
    features = cache.get_or_compute(key, compute, f"{what} features")
    if memo is not None:
        memo[memo_key] = features
    return features


def heldout_distances(plan: "Plan", cache: FeatureCache, progress: Progress | None, memo: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Training features and each held-out image's distance to its nearest training image, for memorization.

    The distances depend only on the two real sets and the extractor, so they are cached like features, keyed by
    both sets' feature keys: the search (10,000 x 60,000 on Fashion-MNIST, about 2 s on a 2-core CPU) runs once.
    """
    extractor, config, layer = plan.extractor, plan.config, plan.extractor.feature_layer
    train_features = reference_features(extractor, plan.train, cache, config, progress, "train", memo)[layer]
    train_key, heldout_key = feature_key(extractor, plan.train), feature_key(extractor, plan.heldout)

    def compute() -> dict[str, torch.Tensor]:
        heldout = reference_features(extractor, plan.heldout, cache, config, progress, "held-out", memo)[layer]
        return {"d_heldout": nearest_distances(heldout, train_features)}

    if train_key is None or heldout_key is None:
        return train_features, compute()["d_heldout"]
    key = {"kind": "heldout_nearest_train_distances", "train": train_key, "heldout": heldout_key, "layer": layer}
    return train_features, cache.get_or_compute(key, compute, "held-out nearest-neighbour distances")["d_heldout"]


def precision_radii(plan: "Plan", real_features: dict[str, torch.Tensor], cache: FeatureCache) -> torch.Tensor:
    """The reference's k-NN radii for precision (:func:`genbench.metrics.fidelity.knn_radii`), cached beside
    its features: they depend only on the reference and ``metrics.prc_neighborhood``, not on the generated images."""
    layer, k = plan.extractor.feature_layer, plan.config.prc_neighborhood
    features = real_features[layer]
    reference_key = feature_key(plan.extractor, plan.reference)
    if reference_key is None:
        return knn_radii(features, k)
    key = {"kind": "reference_knn_radii", "reference": reference_key, "layer": layer, "neighborhood": k}
    compute = lambda: {"radii": knn_radii(features, k)}  # noqa: E731
    return cache.get_or_compute(key, compute, "reference k-NN radii")["radii"]


@dataclass
class Plan:
    """An evaluation settled before any work: checked settings, built extractor, named images, its protocol."""

    config: MetricsConfig
    extractor: Extractor
    reference: ImageSet
    n_fake: int
    sampler: dict | None  # the model's sampler settings (``sampler_settings``); None: takes none, or bare images
    train: ImageSet | None = None
    heldout: ImageSet | None = None
    protocol: Protocol | None = None
    fake_shape: tuple[int, ...] | None = None  # (C, H, W) of the generated images, when known before scoring
    conversions: list[Conversion] = field(default_factory=list)  # what was changed to score them (see plan_evaluation)

    @property
    def memorization(self) -> bool:
        return bool(self.config.memorization and self.train is not None and self.heldout is not None)


def _as_set(images, name: str) -> ImageSet | None:
    if images is None or isinstance(images, ImageSet):
        return images
    return images_from_tensor(images, name) if torch.is_tensor(images) else images_from_path(images)


def plan_evaluation(
    cfg_metrics: MetricsConfig | DictConfig | dict | None,
    reference: torch.Tensor | str | Path | ImageSet,
    n_fake: int,
    *,
    sampler: dict | None = None,
    train: ImageSet | torch.Tensor | None = None,
    heldout: ImageSet | torch.Tensor | None = None,
    fake_shape: tuple[int, ...] | None = None,
    fake_conversions: list[Conversion] | None = None,
) -> Plan:
    """Check the settings, build the extractor and name the protocol of scoring ``n_fake`` images.

    ``fake_shape``: the generated images' (C, H, W); ``fake_conversions``: what reading them from files changed.
    Both, with what reading the reference changed, make the plan's ``conversions`` (see :func:`conversions`)."""
    config = MetricsConfig.from_cfg(cfg_metrics)
    reference, train, heldout = _as_set(reference, "reference"), _as_set(train, "train"), _as_set(heldout, "heldout")
    n_real = reference.count if reference.count is not None else len(reference.load())
    check_counts(config, n_real, int(n_fake))  # before any image is sampled or scored
    extractor = build_extractor(
        config.extractor, reference.channels, config.torch_device(), config.inception_weights, config.extractor_weights
    )
    log.info("extractor %s (weights sha256 %s...) on %s", extractor.name, extractor.weights_sha256[:12], extractor.device)
    plan = Plan(config, extractor, reference, int(n_fake), sampler, train, heldout,
                fake_shape=None if fake_shape is None else tuple(int(s) for s in fake_shape),
                conversions=conversions(reference, fake_shape, fake_conversions or []))  # fmt: skip
    for conversion in plan.conversions:
        log.warning("scored with a conversion: %s", conversion.what)
    fields = protocol_fields(
        config, extractor.name, extractor.weights_sha256, reference_identity(reference.cache_fields, reference.description),
        n_real, plan.n_fake, sampler, extractor.isc_layer is not None, plan.memorization,
        conversions=[c.what for c in plan.conversions if c.changes_score],
    )  # fmt: skip
    plan.protocol = make_protocol(fields)
    return plan


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def conversions(reference: ImageSet, fake_shape, fake_conversions: list[Conversion]) -> list[Conversion]:
    """Everything between the files and the scored pixels: each set's reading conversions, and generated images of
    another size or channel count than the reference (the extractor resizes and converts both to its own input,
    so they are compared at a resolution neither was made at); such a mismatch always changes the score."""
    found = [Conversion(f"generated images: {c.what}", c.changes_score) for c in fake_conversions]
    found += [Conversion(f"reference images: {c.what}", c.changes_score) for c in reference.conversions]
    if fake_shape is not None and reference.shape is not None and tuple(fake_shape) != tuple(reference.shape):
        found.append(Conversion(f"generated images are {_shape(fake_shape)} (CxHxW), the reference {_shape(reference.shape)}"
                                ": the extractor brings both to its own input size and channels", True))  # fmt: skip
    return found


def score_images(plan: Plan, fake: torch.Tensor, progress: Progress | None = None) -> dict:
    """The record of generated uint8 images (N, C, H, W) under ``plan``."""
    if not (torch.is_tensor(fake) and fake.dtype == torch.uint8 and fake.dim() == 4):
        raise GenbenchError(f"generated images must be uint8 (N, C, H, W), got {getattr(fake, 'dtype', type(fake))}")
    if len(fake) != plan.n_fake:
        raise GenbenchError(f"planned to score {plan.n_fake} generated images, got {len(fake)}")
    if plan.fake_shape is not None and tuple(fake.shape[1:]) != plan.fake_shape:
        raise GenbenchError(f"planned to score {_shape(plan.fake_shape)} images, got {_shape(fake.shape[1:])}")
    check_not_constant(fake, "refusing to score")
    config, extractor = plan.config, plan.extractor
    cache, memo = FeatureCache(config.cache_dir), {}
    started = time.perf_counter()
    with nullcontext(progress) if progress is not None else progress_bar() as bar:
        fake_features = extractor.features(fake, bar, "generated features")
        real_features = reference_features(extractor, plan.reference, cache, config, bar, "reference", memo)
        record = {
            "protocol": plan.protocol.id,
            "extractor": extractor.name,
            "extractor_sha256": extractor.weights_sha256,
            "n_real": len(real_features[extractor.feature_layer]),
            "n_fake": len(fake),
            "reference": plan.reference.description,
        }
        if record["n_real"] != plan.protocol.fields["n_real"]:
            raise GenbenchError(f"the reference holds {record['n_real']} images, the plan said {plan.protocol.fields['n_real']}")
        record.update(
            score(
                fake_features, real_features, extractor.feature_layer, extractor.isc_layer, config.kid_subsets,
                config.kid_subset_size, config.isc_splits, config.prc_neighborhood, seed=2020 + config.seed,
                real_radii=precision_radii(plan, real_features, cache),
            )  # fmt: skip
        )
        record["memorization"] = None
        if plan.memorization:
            train_features, d_heldout = heldout_distances(plan, cache, bar, memo)
            record.update(
                memorization(fake_features[extractor.feature_layer], train_features, None,
                             config.memorization_percentile, d_heldout=d_heldout)
            )  # fmt: skip
    sampler = plan.sampler or {}
    record.update(
        sampler=sampler.get("sampler"), sampler_steps=sampler.get("steps"), sample_seconds_per_1k=None,
        sampler_settings=plan.sampler, conversions=[c.what for c in plan.conversions],
        scoring_protocol=plan.protocol.scoring_id, protocol_fields=plan.protocol.fields,
        score_seconds=round(time.perf_counter() - started, 2), cache_hits=cache.hits, cache_misses=cache.misses,
        metrics_config=config.model_dump(),
    )  # fmt: skip
    return {k: record[k] for k in CONTRACT_FIELDS} | {k: v for k, v in record.items() if k not in CONTRACT_FIELDS}


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
    if not (torch.is_tensor(fake) and fake.dtype == torch.uint8 and fake.dim() == 4):
        raise GenbenchError(f"generated images must be uint8 (N, C, H, W), got {getattr(fake, 'dtype', type(fake))}")
    plan = plan_evaluation(cfg_metrics, reference, len(fake), train=train, heldout=heldout, fake_shape=fake.shape[1:])
    return score_images(plan, fake, progress)


def plan_evaluations(cfg_metrics: MetricsConfig | DictConfig | dict | None, reference, n_fake: int, **kwargs) -> list[Plan]:
    """:func:`plan_evaluation` once per extractor of ``metrics.extractors`` (or ``metrics.extractor``), in order."""
    config = MetricsConfig.from_cfg(cfg_metrics)
    return [plan_evaluation(config.for_extractor(name), reference, n_fake, **kwargs) for name in config.extractor_names()]


def model_sampler(model, sampler: DictConfig | dict | None) -> dict | None:
    """The settings ``model`` samples with (:func:`genbench.sampling.sampler_settings`)."""
    from genbench.sampling import sampler_settings

    return sampler_settings(model, sampler)


def balanced_labels(model, n: int) -> torch.Tensor | None:
    """Image i of a class-conditional model gets class i mod C: equal counts, the same at any batch size."""
    return None if model.num_classes is None else torch.arange(n) % model.num_classes


@torch.no_grad()
def sample_images(
    model,
    n: int,
    batch_size: int,
    seed: int,
    sampler: dict | None,
    device: torch.device,
    progress: Progress | None = None,
    compile: bool = False,
    timings: dict | None = None,
) -> tuple[torch.Tensor, float]:
    """``n`` uint8 samples and the seconds spent sampling; ``sampler``: settings from :func:`model_sampler`.

    Image i's noise is the stream of ``(seed, i)`` and its label is i mod C, so the images do not depend on the
    batch size or the device. ``compile`` (``metrics.compile``): a model that takes a sampler samples through
    ``torch.compile``, every batch at one shape: the last batch is filled up with the next images' noise and
    labels, and cut (each image depends on its own noise and label alone). The compilation runs before the clock
    starts, in one warm-up call of the network; ``timings``, when given, receives its ``compile_seconds``.
    """
    from genbench.imageio import check_finite, to_uint8

    compile = compile and model.takes_sampler  # a one-pass model has no compiled sampling path
    shape = min(batch_size, n)
    labels = balanced_labels(model, -(-n // shape) * shape if compile else n)
    task = progress.add_task(f"sampling {model.family}", total=n) if progress is not None else None
    batches = []
    with model.compiled_sampling() if compile else nullcontext():
        _synchronize(device)
        started = time.perf_counter()
        if compile:  # compiles here, before the sampling's clock starts
            model.warm_up_sampling(shape, None if labels is None else labels[:shape].to(device), **(sampler or {}))
            _synchronize(device)
            if timings is not None:
                timings["compile_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            run = shape if compile else count
            batch_labels = None if labels is None else labels[start : start + run].to(device)
            noise = IndexedNoise.range(seed, start, run, device)
            images = model.sample(run, labels=batch_labels, generator=noise, **(sampler or {}))[:count]
            check_finite(images, f"the {model.family} model's samples {start}-{start + count - 1}")
            batches.append(to_uint8(images))
            if progress is not None:
                progress.advance(task, count)
    _synchronize(device)
    return torch.cat(batches), time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plan_model_evaluation(model, cfg_metrics, datamodule, sampler: DictConfig | dict | None = None) -> Plan:
    """Plan scoring ``metrics.n_samples`` images of ``model`` against ``datamodule``'s reference split.

    Memorization compares with the model's training images (``datamodule``'s train split, honouring
    ``data.subset``) and ``metrics.heldout_split``.
    """
    config = MetricsConfig.from_cfg(cfg_metrics)
    settings = model_sampler(model, sampler)  # bad or inapplicable sampler settings fail here, before any work
    return plan_evaluation(
        config,
        images_from_datamodule(datamodule, config.reference_split, config.n_reference),
        config.n_samples,
        sampler=settings,
        train=images_from_datamodule(datamodule, "train"),
        heldout=images_from_datamodule(datamodule, config.heldout_split),
        fake_shape=model.image_shape,
    )


def plan_model_evaluations(model, cfg_metrics, datamodule, sampler: DictConfig | dict | None = None) -> list[Plan]:
    """One plan per extractor of ``metrics.extractors`` (``metrics.extractor`` alone when it is null), in its order:
    the first is the run's own protocol. Every plan scores the same images, so they are sampled once."""
    config = MetricsConfig.from_cfg(cfg_metrics)
    return [plan_model_evaluation(model, config.for_extractor(name), datamodule, sampler)
            for name in config.extractor_names()]  # fmt: skip


def run_model_evaluation(model, plan: Plan) -> dict:
    """Sample ``plan.n_fake`` images from ``model`` and score them under ``plan``."""
    return run_model_evaluations(model, [plan])[0]


def run_model_evaluations(model, plans: list[Plan]) -> list[dict]:
    """Sample ``n_fake`` images from ``model`` once and score them under each plan (plans differ only by extractor:
    :func:`plan_model_evaluations`); one record per plan, in order."""
    plan = plans[0]
    if any(p.n_fake != plan.n_fake or p.sampler != plan.sampler or p.config.seed != plan.config.seed for p in plans):
        raise ValueError("plans scored on one set of samples must agree on n_fake, sampler and seed")
    device = plan.config.torch_device()
    model = model.to(device).eval()
    log.info("protocol %s: sampling %d images from the %s model (sampler %s) on %s", ", ".join(p.protocol.id for p in plans),
             plan.n_fake, model.family, plan.sampler or "none: one pass", device)  # fmt: skip
    timings = {}
    with progress_bar() as bar:
        batch = plan.config.sampling_batch(plan.sampler)
        fake, seconds = sample_images(model, plan.n_fake, batch, plan.config.seed, plan.sampler, device, bar,
                                      compile=plan.config.compile_sampling(plan.n_fake), timings=timings)  # fmt: skip
        records = [score_images(p, fake, bar) for p in plans]
    for record in records:
        record.update(sample_seconds_per_1k=round(seconds / plan.n_fake * 1000, 3), family=model.family, device=str(device),
                      sampling_batch_size=batch, sampling_compiled="compile_seconds" in timings)  # fmt: skip
        if record["sampling_compiled"]:  # apart from sample_seconds_per_1k, as training's compile_seconds from its budget
            record["sampling_compile_seconds"] = round(timings["compile_seconds"], 2)
        if plan.sampler is not None and model.takes_sampler:
            record["sampler_nfe"] = model.sampler_nfe(**plan.sampler)
        # per image, for these sampler settings: one network call times the NFE (plus a latent decode), or one pass
        record["sample_flops_per_image"] = sampling_flops(model, plan.sampler)
    return records


def evaluate_model(model, cfg_metrics, datamodule, sampler: DictConfig | dict | None = None) -> dict:
    """Plan and run the evaluation of ``model`` (see :func:`plan_model_evaluation`) with ``metrics.extractor``, the
    first of ``metrics.extractors``; :func:`plan_model_evaluations` plans one per extractor."""
    return run_model_evaluation(model, plan_model_evaluation(model, cfg_metrics, datamodule, sampler))
