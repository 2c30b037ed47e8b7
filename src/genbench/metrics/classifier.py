"""The Fashion-MNIST classifier whose features the offline evaluator uses.

A small VGG-style CNN: two conv stages (3x3 conv + batchnorm + ReLU, twice, then 2x2 max-pool), a 128-unit
fully connected layer whose activations are the *penultimate features* (for FID, KID, precision/recall and
memorization) and an 11-way linear head whose softmax is the class posterior (for the Inception Score).

The 11th class, "not a garment", is trained on synthetic junk (noise, blobs, flat images: outlier exposure,
Hendrycks et al. 2019). A plain 10-way classifier maps noise onto the textured shirts and bags, so noise then
falls inside real images' k-NN balls and precision calls it realistic; with the extra class it lands apart.

Inputs may be uint8 images of any size with 1 or 3 channels: :func:`to_grey28` maps both to the grey 28x28
float images the network was trained on, identically for generated and real images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genbench.errors import GenbenchError
from genbench.files import read_json

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS_PATH = ASSETS / "fmnist_classifier.pt"
RECORD_PATH = ASSETS / "fmnist_classifier.json"
IMAGE_SIZE = 28
FEATURE_DIM = 128
NUM_CLASSES = 11  # the ten Fashion-MNIST classes, then JUNK_CLASS
JUNK_CLASS = 10
# Fashion-MNIST train split's pixel mean and standard deviation in [0, 1].
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530
# ITU-R BT.601 luma weights: the usual RGB -> grey conversion (as PIL's "L" mode).
LUMA = (0.299, 0.587, 0.114)


def to_grey28(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 (N, C, H, W) images, C in {1, 3}, to normalised float (N, 1, 28, 28) network inputs."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise GenbenchError(f"expected images of shape (N, 1|3, H, W), got {tuple(images.shape)}")
    x = images.float() / 255.0
    if x.shape[1] == 3:
        luma = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * luma).sum(dim=1, keepdim=True)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return (x - PIXEL_MEAN) / PIXEL_STD


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def conv_encoder(width: int = 16, feature_dim: int = FEATURE_DIM) -> tuple[nn.Sequential, nn.Sequential]:
    """``(body, embed)``: the conv stages and the 128-unit feature layer, shared by the classifier and the
    label-free extractor (:mod:`genbench.metrics.ssl`), so the two feature spaces differ only in how they were trained."""
    body = nn.Sequential(
        _conv_bn_relu(1, width),
        _conv_bn_relu(width, width),
        nn.MaxPool2d(2),  # 28 -> 14
        _conv_bn_relu(width, 2 * width),
        _conv_bn_relu(2 * width, 2 * width),
        nn.MaxPool2d(2),  # 14 -> 7
        nn.Flatten(),
    )
    embed = nn.Sequential(
        nn.Linear(2 * width * 7 * 7, feature_dim, bias=False), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)
    )
    return body, embed


class FashionClassifier(nn.Module):
    """CNN on normalised grey 28x28 inputs; ``forward`` returns ``(features, logits)``."""

    def __init__(self, width: int = 16, feature_dim: int = FEATURE_DIM, num_classes: int = NUM_CLASSES, dropout: float = 0.3):
        super().__init__()
        self.body, self.embed = conv_encoder(width, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(self.body(x))
        return features, self.head(self.dropout(features))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(record_path: Path = RECORD_PATH) -> dict:
    """The json beside the shipped weights: sha256, test accuracy, training command and seed."""
    return read_json(record_path, what="classifier record")


def load_classifier(weights_path: str | Path | None = None, verify: bool = True) -> tuple[FashionClassifier, str]:
    """The trained classifier in eval mode and its weights' sha256.

    With ``verify`` (the shipped weights only) the sha256 must match the json record beside them.
    """
    return load_network(FashionClassifier, WEIGHTS_PATH, RECORD_PATH, weights_path, verify, "train_classifier")


def load_network(cls, shipped: Path, record: Path, weights_path, verify: bool, trainer: str) -> tuple[nn.Module, str]:
    """A network of class ``cls`` from ``weights_path`` (default: the ``shipped`` file, checked against the sha256
    in its ``record`` json when ``verify``), in eval mode, and its weights' sha256. ``trainer``: the module of
    ``genbench.metrics`` that trains it, named in the error when the file is missing."""
    path = Path(weights_path).expanduser() if weights_path else shipped
    if not path.is_file():
        raise GenbenchError(
            f"extractor weights {path} not found "
            f"(train them with `python -m genbench.metrics.{trainer}` or reinstall genbench)"
        )
    sha = sha256_file(path)
    if verify and weights_path is None:
        expected = read_record(record).get("sha256")
        if expected != sha:
            raise GenbenchError(f"{path} has sha256 {sha}, but {record.name} records {expected}: the weights are corrupt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = cls(**payload.get("arch", {}))
        model.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise GenbenchError(f"cannot load extractor weights {path}: {exc}") from exc
    return model.eval(), sha
