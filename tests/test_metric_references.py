"""FID∞ and IS∞ on cases whose true value is known, density and coverage against the authors' ``prdc`` package."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from prdc import compute_prdc
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.metric_isc import isc_features_to_metric

from genbench.metrics.fidelity import fid, precision_recall_density_coverage, score
from genbench.metrics.unbiased import fid_infinity, is_infinity, subset_sizes


def test_subset_sizes_span_a_fifth_to_all_as_the_paper_does():
    assert subset_sizes(10000) == [2000, 2571, 3143, 3714, 4286, 4857, 5429, 6000, 6571, 7143, 7714, 8286, 8857,
                                   9429, 10000]  # fmt: skip
    assert subset_sizes(12) == [10, 11, 12]
    assert subset_sizes(10) == [10]  # one size: no line to fit, the score is null
    assert subset_sizes(1000, at_least=129) == [200, 257, 314, 371, 429, 486, 543, 600, 657, 714, 771, 829, 886, 943,
                                                1000]  # fmt: skip
    assert subset_sizes(300, at_least=129)[0] == 129 and subset_sizes(100, at_least=129) == []


def _gaussian_case(seed: int, n_fake: int = 500, d: int = 32):
    """Generated features from N(mu, cov) and a real sample; the true FID_∞ is the Fréchet distance between that
    Gaussian and the real sample's statistics (what FID_N tends to as N grows, the reference held fixed)."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(5000, d, generator=g, dtype=torch.float64)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    cov = (a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)).numpy()
    mu = np.full(d, 0.1)
    noise = torch.randn(n_fake, d, generator=g, dtype=torch.float64).numpy()
    fake = torch.from_numpy(mu + noise @ np.linalg.cholesky(cov).T)
    stats = fid_features_to_statistics(real)
    covmean = scipy.linalg.sqrtm(cov @ stats["sigma"]).real
    true = float(((mu - stats["mu"]) ** 2).sum() + np.trace(cov) + np.trace(stats["sigma"]) - 2 * np.trace(covmean))
    return fake, real, true


def test_fid_infinity_is_closer_to_the_true_gaussian_fid_than_fid_at_500():
    errors_n, errors_inf = [], []
    for seed in range(4):
        fake, real, true = _gaussian_case(seed)
        fid_inf = fid_infinity(fake, real, seed)
        assert fid_infinity(fake, real, seed) == fid_inf  # fixed subsets: the same images give the same value
        errors_n.append(abs(fid({"f": fake}, {"f": real}, "f") - true))
        errors_inf.append(abs(fid_inf - true))
    # FID_500 is biased upward by ~0.76 here (13%); the extrapolation removes most of it (measured: 0.76 -> 0.27)
    assert np.mean(errors_inf) < 0.4 * np.mean(errors_n), (errors_n, errors_inf)


def test_is_infinity_recovers_the_class_count_of_confident_uniform_logits():
    """Confident logits of uniformly drawn classes: IS tends to the number of classes, and IS_N falls short of it
    because the plug-in marginal of N labels has less entropy (by about (C - 1) / 2N nats)."""
    classes, n = 50, 1000
    errors_n, errors_inf = [], []
    for seed in range(3):
        labels = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))
        logits = torch.nn.functional.one_hot(labels, classes).double() * 30
        errors_n.append(abs(isc_features_to_metric(logits, splits=1, shuffle=False)["inception_score_mean"] - classes))
        errors_inf.append(abs(is_infinity(logits, seed) - classes))
    assert np.mean(errors_inf) < 0.4 * np.mean(errors_n), (errors_n, errors_inf)  # measured: 1.21 -> 0.28


def test_unbiased_scores_are_null_when_too_few_images_to_extrapolate():
    """IS∞ needs two subset sizes of at least 10 images, FID∞ two of more images than features (16 here)."""
    g = torch.Generator().manual_seed(0)
    fake = {"f": torch.randn(10, 16, generator=g), "logits": torch.randn(10, 4, generator=g)}
    real = {"f": torch.randn(50, 16, generator=g), "logits": torch.randn(50, 4, generator=g)}
    record = score(fake, real, "f", "logits", kid_subsets=2)
    assert record["fid_inf"] is None and record["is_inf"] is None and record["fid"] > 0


@pytest.mark.parametrize("k", [3, 5])
def test_density_and_coverage_equal_the_prdc_package(k):
    g = torch.Generator().manual_seed(k)
    real = torch.randn(600, 64, generator=g)
    fake = 1.1 * torch.randn(500, 64, generator=g) + 0.2  # wider and shifted: density and coverage away from 1
    ours = precision_recall_density_coverage(fake, real, k)
    theirs = compute_prdc(real.numpy(), fake.numpy(), k)
    assert 0.05 < theirs["density"] < 0.95 and 0.05 < theirs["coverage"] < 0.95, theirs
    for name in ("precision", "recall", "density", "coverage"):  # ties never occur here: prdc's < and our <= agree
        assert ours[name] == pytest.approx(float(theirs[name]), abs=1e-6), name
