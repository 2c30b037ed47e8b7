"""FID, IS, KID, precision/recall, density/coverage, FID∞ and IS∞ from extracted features.

FID, IS and KID are torch-fidelity's own functions; FID∞ and IS∞ are in :mod:`genbench.metrics.unbiased`.
Precision/recall is torch-fidelity's ``calculate_precision_recall_part`` step for step (its ``calc_cdist_part``
blocks, its comparisons), with one difference: the real images' k-NN radii, which depend only on the reference, can be
passed in (:func:`knn_radii` of the reference, cached by the evaluator beside the reference features). They are a quarter of
the distances at 10,000 against 10,000 images and most of them at 1,000 against 10,000.

Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models") use the
same k (``metrics.prc_neighborhood``) and the same real k-NN radii, and are counted on recall's distance blocks (real
against generated), so they cost no further distances (a comparison and two counts per block: 0.24 s at 10,000 x
10,000 features on one thread of the 2-core Xeon). Torch-fidelity has no density/coverage, and the authors'
``prdc`` package holds three full distance matrices (400 MB each at 10,000 x 10,000), so they are counted here and
checked equal to ``prdc`` in tests. Their comparisons are strict (inside a ball means closer than its radius), as in
``prdc``; torch-fidelity's precision/recall's are not. Each metric keeps its authors' rule.

Small sets work: KID's subset size becomes ``min(kid_subset_size, n_fake, n_real)`` and the Inception Score uses
``min(isc_splits, n_fake // 100)`` splits (at least one), so that each split holds at least 100 images; the values
used are returned (``kid_subset_size``, ``isc_splits``) for the record.
"""

from __future__ import annotations

import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_featuresdict_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_featuresdict_to_metric
from torch_fidelity.metric_prc import calc_cdist_part

from genbench.errors import GenbenchError
from genbench.metrics.unbiased import fid_infinity, is_infinity

MIN_IMAGES = 10
MIN_IMAGES_PER_ISC_SPLIT = 100
PRC_BATCH = 2000  # rows of the distance matrix held at once: 2000 x 10000 floats = 80 MB


def adapted_sizes(n_fake: int, n_real: int, kid_subset_size: int, isc_splits: int) -> tuple[int, int]:
    """KID subset size and IS split count that fit ``n_fake`` generated and ``n_real`` real images."""
    return min(kid_subset_size, n_fake, n_real), max(1, min(isc_splits, n_fake // MIN_IMAGES_PER_ISC_SPLIT))


def fid(fake: dict[str, torch.Tensor], real: dict[str, torch.Tensor], layer: str) -> float:
    stats_fake = fid_featuresdict_to_statistics({layer: fake[layer].double()}, layer)
    stats_real = fid_featuresdict_to_statistics({layer: real[layer].double()}, layer)
    return fid_statistics_to_metric(stats_fake, stats_real, verbose=False)[KEY_METRIC_FID]


def knn_radii(features: torch.Tensor, neighborhood: int) -> torch.Tensor:
    """Each feature's distance to its ``neighborhood``-th nearest other feature of the same set: the k-NN balls of
    precision (real set) and recall (generated set)."""
    features = features.float()
    return torch.cat([calc_cdist_part(batch, features, PRC_BATCH).kthvalue(neighborhood + 1).values
                      for batch in features.split(PRC_BATCH)])  # fmt: skip


def precision_recall_density_coverage(fake: torch.Tensor, real: torch.Tensor, neighborhood: int,
                                      real_radii: torch.Tensor | None = None) -> dict[str, float]:  # fmt: skip
    """Kynkaanniemi et al. 2019 as torch-fidelity computes it: recall is the fraction of real features inside some
    generated feature's k-NN ball, precision the fraction of generated features inside some real one's. Naeem et al.
    2020: density is the number of (real ball, generated feature) pairs with the feature inside the ball, over k times
    the generated count; coverage the fraction of real balls holding some generated feature."""
    fake, real = fake.float(), real.float()
    fake_radii = knn_radii(fake, neighborhood)
    real_radii = knn_radii(real, neighborhood) if real_radii is None else real_radii
    recalled, covered, pairs_inside = [], [], 0
    for batch, radii in zip(real.split(PRC_BATCH), real_radii.split(PRC_BATCH)):
        distances = calc_cdist_part(batch, fake, PRC_BATCH)  # real rows, generated columns
        recalled.append((distances <= fake_radii).any(dim=1))
        inside = distances < radii[:, None]
        covered.append(inside.any(dim=1))
        pairs_inside += int(torch.count_nonzero(inside))  # a bool tensor's sum() is ~15x slower
    precision = torch.cat([(calc_cdist_part(batch, real, PRC_BATCH) <= real_radii).any(dim=1).float()
                           for batch in fake.split(PRC_BATCH)]).mean().item()  # fmt: skip
    return {
        "precision": precision,
        "recall": torch.cat(recalled).float().mean().item(),
        "density": pairs_inside / (neighborhood * len(fake)),
        "coverage": torch.cat(covered).float().mean().item(),
    }


def score(
    fake: dict[str, torch.Tensor],
    real: dict[str, torch.Tensor],
    feature_layer: str,
    isc_layer: str | None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    isc_splits: int = 10,
    prc_neighborhood: int = 3,
    seed: int = 2020,
    real_radii: torch.Tensor | None = None,
) -> dict:
    """All distribution metrics of generated features ``fake`` against real features ``real``; ``real_radii``: the
    real features' :func:`knn_radii` at ``prc_neighborhood`` when already known."""
    n_fake, n_real = len(fake[feature_layer]), len(real[feature_layer])
    if min(n_fake, n_real) < max(MIN_IMAGES, prc_neighborhood + 2):
        raise GenbenchError(f"need at least {MIN_IMAGES} generated and real images to score, got {n_fake} and {n_real}")
    kid_size, splits = adapted_sizes(n_fake, n_real, kid_subset_size, isc_splits)
    common = {"verbose": False, "rng_seed": seed}
    kid = kid_featuresdict_to_metric(
        fake, real, feature_layer, kid_subsets=kid_subsets, kid_subset_size=kid_size, kid_kernel="poly",
        kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, **common,
    )
    manifold = precision_recall_density_coverage(fake[feature_layer], real[feature_layer], prc_neighborhood, real_radii)
    record = {
        "fid": fid(fake, real, feature_layer),
        "fid_inf": fid_infinity(fake[feature_layer], real[feature_layer], seed),
        "kid_mean": kid[KEY_METRIC_KID_MEAN],
        "kid_std": kid[KEY_METRIC_KID_STD],
        "is_mean": None,
        "is_std": None,
        "is_inf": None,
        **manifold,
        "kid_subsets": kid_subsets,
        "kid_subset_size": kid_size,
        "isc_splits": None,
        "prc_neighborhood": prc_neighborhood,
    }
    if isc_layer is not None:
        isc = isc_featuresdict_to_metric(fake, isc_layer, isc_splits=splits, samples_shuffle=True, **common)
        record.update(is_mean=isc[KEY_METRIC_ISC_MEAN], is_std=isc[KEY_METRIC_ISC_STD], isc_splits=splits,
                      is_inf=is_infinity(fake[isc_layer], seed))  # fmt: skip
    return record
