"""Memorization: do generated images sit closer to training images than unseen real images do?

Definition (in the extractor's feature space, Euclidean distance):

* for every generated image, ``d_fake`` = distance to its nearest training image;
* for every held-out real image (never trained on, e.g. the test split), ``d_heldout`` = distance to its nearest
  training image; ``tau`` = the ``percentile``-th percentile (default 5th) of ``d_heldout``;
* ``memorization`` = fraction of generated images with ``d_fake < tau``.

A model whose samples are as novel as fresh real images scores about ``percentile / 100`` (0.05); a model that
copies its training images scores towards 1. (No library computes this, so it is written here; distances come
from one matrix product per chunk, see :func:`nearest_distances`.)

``d_heldout`` depends only on the training and held-out features, not on the generated images: the evaluator caches
it beside the features (:func:`genbench.metrics.evaluator.heldout_distances`) and passes it in, which saves the
largest search of an evaluation (10,000 x 60,000 distances) on every call after the first.
"""

from __future__ import annotations

import torch

CHUNK = 128  # query rows per distance block: 128 x 60000 floats = 31 MB, which stays in cache better than larger


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Distance from each row of ``queries`` to its nearest row of ``bank``.

    As ``torch.cdist(chunk, bank).min(dim=1)``, which for sets this large takes the same matrix-product route to
    squared distances (the values agree exactly), but it takes the square root of every distance; here the
    minimum is taken over ``||b||^2 - 2 q.b`` (one ``addmm``) and only it gets ``||q||^2`` and the root: 10,000
    generated against 60,000 training features take 1.0 s instead of 2.2 s (2-core Xeon).
    """
    queries, bank = queries.float(), bank.float()
    bank_t, bank_sq = bank.T.contiguous(), bank.pow(2).sum(dim=1)
    nearest = [torch.addmm(bank_sq, chunk, bank_t, alpha=-2).min(dim=1).values + chunk.pow(2).sum(dim=1)
               for chunk in queries.split(CHUNK)]  # fmt: skip
    return torch.cat(nearest).clamp_min(0).sqrt()


def memorization(
    fake: torch.Tensor,
    train: torch.Tensor,
    heldout: torch.Tensor | None,
    percentile: float = 5.0,
    d_heldout: torch.Tensor | None = None,
) -> dict:
    """The memorization score and its ingredients, for the record.

    ``d_heldout``: the held-out images' nearest-training distances when already known (then ``heldout`` is unused).
    """
    if d_heldout is None:
        d_heldout = nearest_distances(heldout, train)
    tau = torch.quantile(d_heldout.double(), percentile / 100.0).item()
    d_fake = nearest_distances(fake, train)
    return {
        "memorization": (d_fake < tau).float().mean().item(),
        "memorization_threshold": tau,
        "memorization_percentile": percentile,
        "memorization_median_nn_fake": d_fake.median().item(),
        "memorization_median_nn_heldout": d_heldout.median().item(),
        "n_train": len(train),
        "n_heldout": len(d_heldout),
    }
