"""One evaluator for every family: FID, IS, KID, precision/recall and memorization on one feature extractor.

Metric formulas are torch-fidelity's; see :mod:`genbench.metrics.evaluator` for the record and
:mod:`genbench.metrics.memorization` for the memorization score's definition.
"""

from genbench.metrics.evaluator import (
    CONTRACT_FIELDS,
    ImageSet,
    MetricsConfig,
    evaluate_images,
    evaluate_model,
    images_from_datamodule,
    images_from_path,
    images_from_tensor,
    sample_images,
)

__all__ = [
    "CONTRACT_FIELDS",
    "ImageSet",
    "MetricsConfig",
    "evaluate_images",
    "evaluate_model",
    "images_from_datamodule",
    "images_from_path",
    "images_from_tensor",
    "sample_images",
]
