"""Feature extractors, all built through torch-fidelity's registry.

``fmnist_classifier`` (the shipped Fashion-MNIST CNN) and ``fmnist_ssl`` (the same network up to its features,
trained without labels: :mod:`genbench.metrics.ssl`) are registered here beside torch-fidelity's own
``inception-v3-compat``, ``dinov2-*`` and ``clip-*``. Every extractor takes uint8 (N, C, H, W) images; sizes are
adapted inside the extractor (each resizes to its own input size), and grey images are repeated to RGB for the
extractors that need three channels, identically for generated and real images.

Weights are never replaced silently: ``inception`` uses ``metrics.inception_weights`` if given, else torch hub's
cache, else a download; offline (no network, or ``GENBENCH_OFFLINE=1``) with neither, it raises
:class:`GenbenchError` telling how to provide the file. DINOv2 and CLIP come through torch hub the same way (CLIP
also from ``metrics.extractor_weights``), with the same error when they cannot be had.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_fidelity
from rich.progress import Progress
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from genbench.errors import GenbenchError
from genbench.metrics.classifier import load_classifier, sha256_file, to_grey28
from genbench.metrics.ssl import load_ssl

log = logging.getLogger(__name__)

FMNIST = "fmnist_classifier"
FMNIST_SSL = "fmnist_ssl"
GREY = (FMNIST, FMNIST_SSL)  # extractors that take grey images as they are (to_grey28), not repeated to RGB
INCEPTION = "inception"
AUTO = "auto"
# Short names accepted for metrics.extractor -> torch-fidelity's registry names.
ALIASES = {INCEPTION: "inception-v3-compat", "dinov2": "dinov2-vit-s-14", "clip": "clip-vit-b-32"}
# Images per feature-extraction forward pass, fixed so that features never depend on metrics.batch_size (see
# Extractor.features); 100 Inception inputs at 299 px fit any GPU genbench targets.
FEATURE_BATCH = 100
# Feature layers per metric. Torch-fidelity's defaults, except that only classifiers' logits give a meaningful IS.
CLASSIFIER_LAYERS = {"inception-v3-compat": ("2048", "logits_unbiased"), FMNIST: ("penultimate", "logits")}
DOWNLOAD_TIMEOUT_S = 30


class ShippedExtractor(torch_fidelity.FeatureExtractorBase):
    """A Fashion-MNIST network shipped in ``genbench/assets``, behind torch-fidelity's interface.

    Accepts uint8 images with 1 or 3 channels at any size (:func:`genbench.metrics.classifier.to_grey28` maps both
    to the grey 28x28 inputs it was trained on). Subclasses say how to load the network and name its outputs.
    """

    @staticmethod
    def load(weights_path):  # -> (network in eval mode, weights sha256)
        raise NotImplementedError

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net, self.weights_sha256 = self.load(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8):
            raise GenbenchError(f"the {self.name} extractor expects uint8 images")
        outputs = self.net(to_grey28(x))
        named = dict(zip(self.get_provided_features_list(), outputs if isinstance(outputs, tuple) else (outputs,)))
        return tuple(named[layer] for layer in self.features_list)

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)


class FMNISTFeatureExtractor(ShippedExtractor):
    """The shipped Fashion-MNIST classifier: ``penultimate`` (128-d, for FID/KID/PRC) and ``logits`` (its class
    posterior, for IS)."""

    load = staticmethod(load_classifier)

    @staticmethod
    def get_provided_features_list():
        return ("penultimate", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]


class FMNISTSSLFeatureExtractor(ShippedExtractor):
    """The shipped label-free encoder (:mod:`genbench.metrics.ssl`): one layer, ``penultimate`` (128-d, for
    FID/KID/PRC/memorization). It has no class posterior, so no Inception Score."""

    load = staticmethod(load_ssl)

    @staticmethod
    def get_provided_features_list():
        return ("penultimate",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise GenbenchError("the fmnist_ssl extractor has no class posterior, so no Inception Score")
        return "penultimate"


for _name, _cls in ((FMNIST, FMNISTFeatureExtractor), (FMNIST_SSL, FMNISTSSLFeatureExtractor)):
    if _name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(_name, _cls)


def offline() -> bool:
    return os.environ.get("GENBENCH_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"


def inception_cache_file() -> Path:
    """Where torch hub keeps the downloaded Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


def _how_to_get_inception() -> str:
    return (
        f"download {URL_INCEPTION_V3} on a machine with network and pass metrics.inception_weights=PATH "
        f"(or copy it to {inception_cache_file()}); or use metrics.extractor={FMNIST} for Fashion-MNIST"
    )


def resolve_name(requested: str, inception_weights: str | None, channels: int) -> str:
    """The torch-fidelity registry name for ``metrics.extractor``.

    ``auto``: Inception when its weights are on this machine (``inception_weights`` or torch hub's cache), else the
    Fashion-MNIST classifier for single-channel data, else an error; the choice is logged and recorded.
    """
    if requested == AUTO:
        if inception_weights or inception_cache_file().is_file():
            chosen = ALIASES[INCEPTION]
        elif channels == 1:
            chosen = FMNIST
        else:
            raise GenbenchError(
                f"metrics.extractor=auto found no Inception weights for these RGB images: {_how_to_get_inception()}"
            )
        log.info("metrics.extractor=auto -> %s", chosen)
        return chosen
    return check_name(requested)


def check_name(requested: str) -> str:
    """The registry name for ``metrics.extractor`` (``auto`` stays ``auto``); an unknown name is a user error.

    Cheap (no weights are loaded), so commands check it before any data, training or sampling.
    """
    if requested == AUTO:
        return AUTO
    name = ALIASES.get(str(requested), str(requested))
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        known = sorted({AUTO, FMNIST, FMNIST_SSL, *ALIASES, *FEATURE_EXTRACTORS_REGISTRY} - {"vgg16"})
        raise GenbenchError(f"unknown metrics.extractor={requested!r} (expected one of {', '.join(known)})")
    return name


def _state_dict_sha256(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Extractor:
    """A built torch-fidelity extractor and the layers each metric reads."""

    name: str  # torch-fidelity registry name, recorded as metrics.json "extractor"
    module: torch_fidelity.FeatureExtractorBase
    feature_layer: str  # FID, KID, precision/recall, memorization
    isc_layer: str | None  # None: no class posterior, so no Inception Score
    weights_sha256: str
    device: torch.device

    @property
    def layers(self) -> list[str]:
        return [self.feature_layer] + ([self.isc_layer] if self.isc_layer else [])

    def adapt(self, images: torch.Tensor) -> torch.Tensor:
        """Check uint8 (N, C, H, W), C in {1, 3}; repeat grey to RGB for extractors that need three channels."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise GenbenchError(
                f"cannot score images of dtype {images.dtype} and shape {tuple(images.shape)}: "
                "expected uint8 (N, C, H, W) with 1 or 3 channels"
            )
        if min(images.shape[-2:]) < 8:
            raise GenbenchError(f"images of {tuple(images.shape[-2:])} pixels are too small to score (need at least 8x8)")
        if self.name not in GREY and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images

    @torch.no_grad()
    def features(
        self, images: torch.Tensor, progress: Progress | None = None, description: str = "features"
    ) -> dict[str, torch.Tensor]:
        """Features of uint8 images, by layer name, on the CPU.

        Always in chunks of ``FEATURE_BATCH`` from the first image, whatever ``metrics.batch_size`` (which sets the
        sampling batch): oneDNN's fp32 convolutions round differently at other batch sizes (AMX Xeon, torch 2.14: FID
        88.78417728 against 88.78417701 at batch 7), and a score must not depend on a machine setting.
        """
        images = self.adapt(images)
        task = progress.add_task(description, total=len(images)) if progress is not None else None
        chunks: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        for start in range(0, len(images), FEATURE_BATCH):
            batch = images[start : start + FEATURE_BATCH].to(self.device)
            out = self.module.convert_features_tuple_to_dict(self.module(batch))
            for layer, value in out.items():
                chunks[layer].append(value.float().cpu())
            if progress is not None:
                progress.advance(task, len(batch))
        return {layer: torch.cat(values) for layer, values in chunks.items()}


def _load(name: str, weights: str | None, device: torch.device) -> torch_fidelity.FeatureExtractorBase:
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    layers = list(CLASSIFIER_LAYERS.get(name, (cls.get_default_feature_layer_for_metric("fid"),)))
    kwargs = {"feature_extractor_weights_path": weights, "verbose": False}
    if name == ALIASES[INCEPTION] and weights is None and offline() and not inception_cache_file().is_file():
        raise GenbenchError(f"no local Inception weights and GENBENCH_OFFLINE=1: {_how_to_provide(name)}")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a download that cannot connect fails instead of hanging
    try:
        module = create_feature_extractor(name, layers, cuda=False, **kwargs)
    except GenbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - download, hub and unpickling errors all mean "weights unavailable"
        raise GenbenchError(
            f"cannot load weights for extractor {name} ({type(exc).__name__}: {exc}): {_how_to_provide(name)}"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return module.to(device)


def _how_to_provide(name: str) -> str:
    if name == ALIASES[INCEPTION]:
        return _how_to_get_inception()
    if name.startswith("clip"):
        return (
            "pass metrics.extractor_weights=PATH to the CLIP TorchScript file, "
            f"or fill torch hub's cache ({torch.hub.get_dir()}) while online"
        )
    return f"fill torch hub's cache ({torch.hub.get_dir()}) while online, or choose another metrics.extractor"


def build_extractor(
    requested: str,
    channels: int,
    device: torch.device | str = "cpu",
    inception_weights: str | None = None,
    extractor_weights: str | None = None,
) -> Extractor:
    """Build the extractor named by ``metrics.extractor`` for images with ``channels`` channels."""
    device = torch.device(device)
    name = resolve_name(requested, inception_weights, channels)
    weights = inception_weights if name == ALIASES[INCEPTION] else extractor_weights
    if weights is not None:
        weights = str(Path(weights).expanduser())
        if not Path(weights).is_file():
            key = "inception_weights" if name == ALIASES[INCEPTION] else "extractor_weights"
            raise GenbenchError(f"metrics.{key}={weights} is not a file (expected the {name} weights)")
        if name.startswith("dinov2"):
            raise GenbenchError("torch-fidelity loads DINOv2 only through torch hub: drop metrics.extractor_weights")
    module = _load(name, weights, device)
    if name in GREY:
        sha = module.weights_sha256
    elif weights is not None:
        sha = sha256_file(Path(weights))
    elif name == ALIASES[INCEPTION]:
        sha = sha256_file(inception_cache_file())
    else:
        sha = _state_dict_sha256(module)
    feature_layer, isc_layer = CLASSIFIER_LAYERS.get(name, (module.features_list[0], None))
    return Extractor(name, module, feature_layer, isc_layer, sha, device)
