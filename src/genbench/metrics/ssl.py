"""The label-free Fashion-MNIST feature extractor (``metrics.extractor=fmnist_ssl``), a second opinion on the classifier.

The classifier's features were trained to tell the ten classes apart, so a FID in them can move with the class
histogram alone (Kynkäänniemi et al. 2023). This extractor has the classifier's architecture up to its 128-unit
feature layer (:func:`genbench.metrics.classifier.conv_encoder`) and never saw a label: it was trained by SimCLR
(Chen et al. 2020) on the Fashion-MNIST training split, pulling two views of an image together against the other
images of the batch (:func:`nt_xent`).

The views differ only in geometry and global intensity (:func:`views`: a crop of 50-100% of the area, a mirror,
brightness and contrast within ±30%). An evaluator must not be blind to what makes an image worse, and SimCLR makes
its features invariant to whatever the views differ by, so blur, noise and occluding patches, the usual SimCLR
augmentations, are left out on purpose.

:func:`knn_accuracy` and :func:`linear_probe_accuracy` measure a frozen feature space with the test labels (the
README's table and ``assets/fmnist_ssl.json``); ``python -m genbench.metrics.train_ssl`` trains and records it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genbench.metrics.classifier import ASSETS, FEATURE_DIM, conv_encoder, load_network

WEIGHTS_PATH = ASSETS / "fmnist_ssl.pt"
RECORD_PATH = ASSETS / "fmnist_ssl.json"
CROP_AREA = (0.5, 1.0)  # share of the image a view keeps
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios of the crop
JITTER = 0.3  # brightness and contrast factors within 1 ± JITTER


class SSLEncoder(nn.Module):
    """The classifier's conv stages and feature layer, without a head: normalised grey 28x28 in, 128 features out."""

    def __init__(self, width: int = 16, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.body, self.embed = conv_encoder(width, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(x))


def load_ssl(weights_path: str | Path | None = None, verify: bool = True) -> tuple[SSLEncoder, str]:
    """The trained encoder in eval mode and its weights' sha256 (the shipped file is checked against its record)."""
    return load_network(SSLEncoder, WEIGHTS_PATH, RECORD_PATH, weights_path, verify, "train_ssl")


def views(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view of each image of a (N, 1, H, W) batch of [0, 1] floats, each with its own parameters.

    Written as one batched affine resampling rather than torchvision's transforms, which draw one set of parameters
    per call: per-image calls on 60,000 small images cost more than the network's step on a CPU.
    """
    n = len(images)
    uniform = lambda low, high: low + (high - low) * torch.rand(n, generator=generator)  # noqa: E731
    area = uniform(*CROP_AREA)
    ratio = torch.exp(uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    width = torch.sqrt(area * ratio).clamp(max=1.0)  # as shares of the image side
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    # centres in [-1, 1] coordinates such that the crop stays inside the image
    cx = (1 - width) * (2 * torch.rand(n, generator=generator) - 1)
    cy = (1 - height) * (2 * torch.rand(n, generator=generator) - 1)
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * mirror, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brightness = uniform(1 - JITTER, 1 + JITTER).view(n, 1, 1, 1)
    contrast = uniform(1 - JITTER, 1 + JITTER).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean * brightness).clamp(0, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view's partner is its class among the other 2N - 2 views of the batch (cross entropy
    over cosine similarities divided by ``temperature``)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is not its own partner
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, partner)


@torch.no_grad()
def knn_accuracy(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor, k: int = 20
) -> float:
    """Test accuracy of a majority vote among each test feature's ``k`` nearest training features by cosine
    similarity (ties: the class whose members are nearest, via similarity-summed votes)."""
    train, test = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    classes = int(train_labels.max()) + 1
    correct = 0
    for start in range(0, len(test), 1000):
        similarity = test[start : start + 1000] @ train.T
        top, index = similarity.topk(k, dim=1)
        votes = torch.zeros(len(top), classes).scatter_add_(1, train_labels[index], 1 + 1e-3 * top)
        correct += int((votes.argmax(1) == test_labels[start : start + 1000]).sum())
    return correct / len(test)


def linear_probe_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    weight_decay: float = 1e-4,
    iterations: int = 200,
) -> float:
    """Test accuracy of a multinomial logistic regression on frozen, standardised features, fitted by full-batch
    L-BFGS (deterministic, no learning rate to tune) with an L2 penalty of ``weight_decay``."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    x, x_test = (train.float() - mean) / std, (test.float() - mean) / std
    classes = int(train_labels.max()) + 1
    linear = nn.Linear(x.shape[1], classes)
    nn.init.zeros_(linear.weight), nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), train_labels) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((linear(x_test).argmax(1) == test_labels).float().mean())
