"""``metrics.*``: the evaluator's settings, checked in full before any data is loaded or any image is sampled.

conf/metrics/default.yaml holds the same defaults, with comments. :meth:`MetricsConfig.from_cfg` is the check every
command runs first (train's preflight, evaluate, the report's FID curve): types, ranges, split names, weight files
and the extractor's name, so ``metrics.extractor=bogus evaluate=true`` fails at once rather than after training.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genbench.devices import pick_device
from genbench.errors import GenbenchError
from genbench.metrics.cache import DEFAULT_DIR

SPLITS = ("train", "val", "test")
COMPILE_CHOICES = ("auto", "true", "false")
CPU_COMPILE_FROM = 5000  # metrics.compile=auto on a CPU: compile the sampling network from this many images
# metrics.batch_size=auto: the sampling batch measured fastest (README "Speed switches"). On the 2-core Xeon,
# DPM-Solver++(2M) 20, samples/s at batch 64/128/256: fp32 compiled 50/49/43 and eager 38/36 (at 64/128); bf16
# compiled 79/89/93 and eager 54/62 (at 64/128). A GPU takes the GPU study's batch (make bench --paper).
CPU_SAMPLING_BATCH = {"32-true": 64, "bf16-mixed": 128}
CUDA_SAMPLING_BATCH = 512
# Settings that decide where and how fast a score is computed, never its value (see genbench.metrics.protocol).
MACHINE_KEYS = ("batch_size", "device", "cache_dir", "compile")


@dataclass
class MetricsConfig:
    extractor: str = "auto"
    inception_weights: str | None = None
    extractor_weights: str | None = None
    n_samples: int = 10000
    reference_split: str = "test"
    n_reference: int | None = None
    memorization: bool = True
    heldout_split: str = "test"
    memorization_percentile: float = 5.0
    batch_size: int | str = "auto"  # auto (sampling_batch) | images per sampling pass
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    isc_splits: int = 10
    prc_neighborhood: int = 3
    seed: int = 0
    device: str = "auto"
    compile: str = "auto"  # auto (CUDA, or a CPU from CPU_COMPILE_FROM images) | true | false
    cache_dir: str | None = DEFAULT_DIR

    @classmethod
    def from_cfg(cls, cfg: "MetricsConfig | DictConfig | dict | None") -> "MetricsConfig":
        """A checked config from ``cfg.metrics`` (or a dict); any bad value is a :class:`GenbenchError`."""
        if isinstance(cfg, MetricsConfig):
            return cfg.check()
        values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
        names = [f.name for f in fields(cls)]
        unknown = set(values) - set(names)
        if unknown:
            raise GenbenchError(f"unknown metrics keys {sorted(unknown)} (expected some of {names})")
        try:  # OmegaConf's structured config converts "250" to 250 and refuses "abc" for an int
            config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
            value = values.get(str(key)) if key is not None else None
            expected = {f.name: f.type for f in fields(cls)} | {"batch_size": "auto or a positive integer"}
            expected = expected.get(str(key), "a valid value")
            raise GenbenchError(f"metrics.{key}={value!r}: expected {expected}") from exc
        return config.check()

    def check(self) -> "MetricsConfig":
        from genbench.metrics.extractors import check_name

        check_name(self.extractor)
        for key in ("reference_split", "heldout_split"):
            if getattr(self, key) not in SPLITS:
                raise GenbenchError(f"metrics.{key}={getattr(self, key)!r} is not one of {', '.join(SPLITS)}")
        for key in ("n_samples", "kid_subsets", "kid_subset_size", "isc_splits", "prc_neighborhood"):
            if getattr(self, key) < 1:
                raise GenbenchError(f"metrics.{key}={getattr(self, key)}; expected a positive integer")
        if isinstance(self.batch_size, str) and self.batch_size.isdigit():  # "256" from a dict: an int, as OmegaConf
            self.batch_size = int(self.batch_size)
        if self.batch_size != "auto" and (isinstance(self.batch_size, str) or self.batch_size < 1):
            raise GenbenchError(f"metrics.batch_size={self.batch_size!r}; expected auto or a positive integer")
        if self.n_reference is not None and self.n_reference < 1:
            raise GenbenchError(f"metrics.n_reference={self.n_reference}; expected a positive integer or null (all)")
        if not 0 < self.memorization_percentile < 100:
            raise GenbenchError(f"metrics.memorization_percentile={self.memorization_percentile}; expected in (0, 100)")
        for key in ("inception_weights", "extractor_weights"):
            path = getattr(self, key)
            if path is not None and not Path(path).expanduser().is_file():
                raise GenbenchError(f"metrics.{key}={path} is not a file (expected the extractor's weights)")
        self.torch_device()
        if str(self.compile).lower() not in COMPILE_CHOICES:
            raise GenbenchError(f"metrics.compile={self.compile!r}; expected {', '.join(COMPILE_CHOICES)}")
        return self

    def compile_sampling(self, n: int | None = None) -> bool:
        """Whether diffusion sampling of ``n`` images (default ``n_samples``) runs through ``torch.compile``.

        ``auto``: always on CUDA; on a CPU from :data:`CPU_COMPILE_FROM` images, where the compilation pays for itself
        even with a cold inductor cache (README "Speed switches": on the 2-core Xeon, DPM-Solver++(2M) 20 at batch
        64 in fp32, compiling takes 44 s cold and 3 s warm and then samples 1.4-1.6x faster, about 8 ms less per image).
        """
        choice = str(self.compile).lower()
        if choice != "auto":
            return choice == "true"
        return self.torch_device().type == "cuda" or (self.n_samples if n is None else n) >= CPU_COMPILE_FROM

    def sampling_batch(self, sampler: dict | None = None) -> int:
        """Images per sampling pass: ``metrics.batch_size``, or for ``auto`` the batch measured fastest for the
        device and the network's precision while sampling (``sampler.precision`` in ``sampler``, the settings of
        :func:`~genbench.metrics.settings.model_sampler`): :data:`CPU_SAMPLING_BATCH`, on CUDA
        :data:`CUDA_SAMPLING_BATCH`. Never changes a score: image i's noise and label are its own at any batch."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        return fastest_sampling_batch(self.torch_device(), sampler)

    def torch_device(self) -> torch.device:
        return pick_device(self.device, "metrics.device")

    def protocol_settings(self) -> dict:
        """The settings that enter the protocol, as configured (before ``auto`` or weights are resolved)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in MACHINE_KEYS}


def fastest_sampling_batch(device: torch.device, sampler: dict | None = None) -> int:
    """The sampling batch measured fastest on ``device`` for the precision in ``sampler`` (``sampler.precision``;
    absent: fp32): ``batch_size=auto`` of the evaluator (``metrics.batch_size``) and of ``genbench.sample``."""
    if device.type == "cuda":
        return CUDA_SAMPLING_BATCH
    return CPU_SAMPLING_BATCH[(sampler or {}).get("precision", "32-true")]


def check_metrics(cfg_metrics) -> MetricsConfig:
    """One call for a command's preflight: ``metrics.*`` is usable, or a one-line :class:`GenbenchError`."""
    return MetricsConfig.from_cfg(cfg_metrics)
