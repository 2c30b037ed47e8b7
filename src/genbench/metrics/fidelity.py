"""FID, IS, KID and precision/recall from extracted features, all computed by torch-fidelity's own functions.

Small sets work: KID's subset size becomes ``min(kid_subset_size, n_fake, n_real)`` and the Inception Score uses
``min(isc_splits, n_fake // 100)`` splits (at least one), so that each split holds at least 100 images; the values
used are returned (``kid_subset_size``, ``isc_splits``) for the record.
"""

from __future__ import annotations

import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_featuresdict_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_featuresdict_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_featuresdict_to_metric

from genbench.errors import GenbenchError

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
) -> dict:
    """All distribution metrics of generated features ``fake`` against real features ``real``."""
    n_fake, n_real = len(fake[feature_layer]), len(real[feature_layer])
    if min(n_fake, n_real) < max(MIN_IMAGES, prc_neighborhood + 2):
        raise GenbenchError(f"need at least {MIN_IMAGES} generated and real images to score, got {n_fake} and {n_real}")
    kid_size, splits = adapted_sizes(n_fake, n_real, kid_subset_size, isc_splits)
    common = {"verbose": False, "rng_seed": seed}
    kid = kid_featuresdict_to_metric(
        fake, real, feature_layer, kid_subsets=kid_subsets, kid_subset_size=kid_size, kid_kernel="poly",
        kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, **common,
    )
    # Torch-fidelity's convention: input 1 is generated, input 2 is real.
    prc = prc_featuresdict_to_metric(
        fake, real, feature_layer, prc_neighborhood=prc_neighborhood, prc_batch_size=PRC_BATCH, save_cpu_ram=True, **common
    )
    record = {
        "fid": fid(fake, real, feature_layer),
        "kid_mean": kid[KEY_METRIC_KID_MEAN],
        "kid_std": kid[KEY_METRIC_KID_STD],
        "is_mean": None,
        "is_std": None,
        "precision": prc[KEY_METRIC_PRECISION],
        "recall": prc[KEY_METRIC_RECALL],
        "kid_subsets": kid_subsets,
        "kid_subset_size": kid_size,
        "isc_splits": None,
        "prc_neighborhood": prc_neighborhood,
    }
    if isc_layer is not None:
        isc = isc_featuresdict_to_metric(fake, isc_layer, isc_splits=splits, samples_shuffle=True, **common)
        record.update(is_mean=isc[KEY_METRIC_ISC_MEAN], is_std=isc[KEY_METRIC_ISC_STD], isc_splits=splits)
    return record
