"""FID∞ and IS∞: FID and Inception Score with their finite-sample bias extrapolated away.

Chong & Forsyth 2020 ("Effectively Unbiased FID and Inception Score and where to find them") show that FID_N,
the FID of N generated images against fixed reference statistics, is to first order ``FID_∞ + k / N``, where the slope
``k`` depends on the generator: FIDs of two models at one N can rank them differently from their FIDs at another
N. The same holds for IS_N. Their estimate, followed here: score random subsets of the one set of generated images at
:data:`POINTS` sizes spread evenly from about ``n / 5`` to ``n`` (they used 5,000 to 50,000), fit the line
``score = a + b / N`` by least squares, and report its intercept ``a`` (the value at ``1 / N = 0``).

What it does on Fashion-MNIST (``fmnist_classifier``, the 10,000 test images as reference): the first training
images score FID 0.47 at N = 1,000 and 0.082 at N = 10,000, FID∞ -0.07 and 0.025 from the same sets; the same images
with Gaussian noise (sigma 25 grey levels) score FID 31.55 and 31.53, FID∞ 31.10 and 31.58. FID∞ is an extrapolation:
it removes the bias, not the noise, which it enlarges, and it can fall below zero where the bias is all there is.

Choices, fixed so that the evaluator's settings, and so its protocol ids, stay as they were:

* sizes :func:`subset_sizes` of ``n_fake``; FID's smallest subset holds more images than there are features, since
  a smaller one's covariance is singular, far from the regime where the paper's expansion in 1/N holds (the paper's
  smallest, 5,000, is above Inception's 2,048); fewer than two sizes leave the score null;
* each subset drawn without replacement, independently of the others, by a generator seeded with the evaluation's
  seed (the seed of KID's subsets), so the same images give the same value;
* FID_N is torch-fidelity's FID (the ``fid`` field's formula) of the subset against all reference features; IS_N is
  torch-fidelity's Inception Score of the subset in one split, as in the paper.

Cost, measured on this project's 2-core Xeon with one thread (best of 5, shared machine): with the default
``fmnist_classifier`` (128 features) at ``metrics.n_samples=10000``, FID∞ 0.24 s and IS∞ 0.04 s per evaluation,
against about 5 s to extract the generated images' features and 5 s for the other scores; the features are reused
and nothing is sampled. With Inception's 2,048 features each FID_N is a 2,048 x 2,048 non-symmetric eigenproblem
(torch-fidelity's formula): at 10,000 images FID took 23 s and FID∞ 217 s, about 15 s per subset.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric

POINTS = 15
SMALLEST = 0.2  # the smallest subset, as a fraction of the generated images
MIN_SUBSET = 10  # fidelity.MIN_IMAGES: no score is computed on fewer images


def subset_sizes(n: int, at_least: int = MIN_SUBSET) -> list[int]:
    """:data:`POINTS` subset sizes from ``n / 5`` (at least ``at_least``) to ``n``, evenly spaced in N as in the
    paper, without repeats: fewer when ``n`` is small, none or one (no line to fit) when ``n <= at_least``."""
    smallest = max(at_least, round(SMALLEST * n))
    return sorted({int(s) for s in np.linspace(smallest, n, POINTS).round()}) if smallest <= n else []


def extrapolate(sizes: list[int], scores: list[float]) -> float:
    """The least-squares line through (1/N, score), read at 1/N = 0."""
    slope, intercept = np.polyfit(1.0 / np.asarray(sizes, dtype=np.float64), np.asarray(scores, dtype=np.float64), 1)
    return float(intercept)


def _subsets(n: int, sizes: list[int], seed: int):
    """Indices of a random subset of each size, drawn without replacement and independently of the others."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=generator)[:size] for size in sizes]


def fid_infinity(fake: torch.Tensor, real: torch.Tensor, seed: int) -> float | None:
    """FID∞ of generated features ``fake`` (N, D) against real features ``real``; None when ``fake`` holds too few
    images for two subset sizes of more than D images each (below that a subset's covariance is singular, far from
    the regime where the paper's expansion in 1/N holds)."""
    sizes = subset_sizes(len(fake), at_least=fake.shape[1] + 1)
    if len(sizes) < 2:
        return None
    stats_real = fid_features_to_statistics(real.double())
    scores = [fid_statistics_to_metric(fid_features_to_statistics(fake[index].double()), stats_real, verbose=False)
              [KEY_METRIC_FID] for index in _subsets(len(fake), sizes, seed)]  # fmt: skip
    return extrapolate(sizes, scores)


def is_infinity(logits: torch.Tensor, seed: int) -> float | None:
    """IS∞ of generated class logits (N, C); None when they hold too few images for two subset sizes."""
    sizes = subset_sizes(len(logits))
    if len(sizes) < 2:
        return None
    scores = [isc_features_to_metric(logits[index], splits=1, shuffle=False)[KEY_METRIC_ISC_MEAN]
              for index in _subsets(len(logits), sizes, seed)]  # fmt: skip
    return extrapolate(sizes, scores)
