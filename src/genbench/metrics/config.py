"""``metrics.*``: the evaluator's settings, checked in full before any data is loaded or any image is sampled.

conf/metrics/default.yaml holds the same defaults, with comments. :meth:`MetricsConfig.from_cfg` is the check every
command runs first (train's preflight, evaluate, the report's FID curve): types, ranges, split names, weight files
and the extractor's name, so ``metrics.extractor=bogus evaluate=true`` fails at once rather than after training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from genbench.devices import pick_device
from genbench.errors import GenbenchError
from genbench.metrics.cache import DEFAULT_DIR
from genbench.schema.check import validate
from genbench.schema.groups import Metrics
from genbench.schema.types import PathText

SPLITS = ("train", "val", "test")
CPU_COMPILE_FROM = 5000  # metrics.compile=auto on a CPU: compile the sampling network from this many images
# metrics.batch_size=auto: the sampling batch measured fastest (README "Speed switches"). On the 2-core Xeon,
# DPM-Solver++(2M) 20, samples/s at batch 64/128/256: fp32 compiled 50/49/43 and eager 38/36 (at 64/128); bf16
# compiled 79/89/93 and eager 54/62 (at 64/128). A GPU takes the GPU study's batch (make bench --paper).
CPU_SAMPLING_BATCH = {"32-true": 64, "bf16-mixed": 128}
CUDA_SAMPLING_BATCH = 512
# Settings that decide where and how fast a score is computed, never its value (see genbench.metrics.protocol).
MACHINE_KEYS = ("batch_size", "device", "cache_dir", "compile")


class MetricsConfig(Metrics):
    """``metrics.*`` with its rules (genbench.schema.groups.Metrics) and what the evaluator derives from it."""

    cache_dir: PathText | None = DEFAULT_DIR

    @classmethod
    def from_cfg(cls, cfg: "MetricsConfig | DictConfig | dict | None") -> "MetricsConfig":
        """A checked config from ``cfg.metrics`` (or a dict); any bad value is a :class:`GenbenchError`."""
        if isinstance(cfg, MetricsConfig):
            return cfg.check()
        values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
        return validate(cls, values, "metrics").check()

    def check(self) -> "MetricsConfig":
        from genbench.metrics.extractors import check_name

        for name in self.extractor_names():
            check_name(name)
        for key in ("inception_weights", "extractor_weights"):
            path = getattr(self, key)
            if path is not None and not Path(path).expanduser().is_file():
                raise GenbenchError(f"metrics.{key}={path} is not a file (expected the extractor's weights)")
        if self.cache_dir is not None and Path(self.cache_dir).expanduser().exists() and not Path(
                self.cache_dir).expanduser().is_dir():  # fmt: skip
            raise GenbenchError(f"metrics.cache_dir={self.cache_dir} is a file; expected a folder for cached features")
        self.torch_device()
        return self

    def extractor_names(self) -> list[str]:
        """The extractors a score is made with: ``metrics.extractors``, else ``metrics.extractor`` alone."""
        return list(self.extractors) if self.extractors else [self.extractor]

    def for_extractor(self, name: str) -> "MetricsConfig":
        """These settings with one extractor: what one protocol (one score file) is made under."""
        return self.model_copy(update={"extractor": name, "extractors": None})

    def compile_sampling(self, n: int | None = None) -> bool:
        """Whether sampling ``n`` images through a sampler (default ``n_samples``) runs through ``torch.compile``.

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
        return {name: getattr(self, name) for name in type(self).model_fields if name not in MACHINE_KEYS}


def fastest_sampling_batch(device: torch.device, sampler: dict | None = None) -> int:
    """The sampling batch measured fastest on ``device`` for the precision in ``sampler`` (``sampler.precision``;
    absent: fp32): ``batch_size=auto`` of the evaluator (``metrics.batch_size``) and of ``genbench.sample``."""
    if device.type == "cuda":
        return CUDA_SAMPLING_BATCH
    return CPU_SAMPLING_BATCH[(sampler or {}).get("precision", "32-true")]


def check_metrics(cfg_metrics) -> MetricsConfig:
    """One call for a command's preflight: ``metrics.*`` is usable, or a one-line :class:`GenbenchError`."""
    return MetricsConfig.from_cfg(cfg_metrics)


def check_counts(config: MetricsConfig, n_real: int | None, n_fake: int) -> None:
    """Settings that must fit the numbers of images, checked before any image is sampled: a metric with too few
    images would otherwise fail after all the sampling (precision/recall's ``kthvalue``), or mean nothing.

    ``n_real``: reference images (None: not known yet, checked once the reference is named). Precision/recall needs
    each image's ``metrics.prc_neighborhood``-th nearest other image in both sets, and every metric at least
    :data:`~genbench.metrics.fidelity.MIN_IMAGES` of each; KID's subset size and IS's splits adapt to the counts.
    """
    from genbench.metrics.fidelity import MIN_IMAGES

    k = config.prc_neighborhood
    need = max(MIN_IMAGES, k + 2)  # fidelity.score's own rule
    for count, what, key in ((n_fake, "generated", "metrics.n_samples"), (n_real, "reference", "metrics.n_reference")):
        if count is not None and count < need:
            raise GenbenchError(f"{count} {what} images ({key}) are too few to score: every metric needs at least "
                                f"{MIN_IMAGES}, and precision/recall with metrics.prc_neighborhood={k} (each image's "
                                f"k-th nearest neighbour) needs at least {k + 2}; give more images or a smaller "
                                "metrics.prc_neighborhood")  # fmt: skip
