"""One evaluator for every family: FID, IS, KID, precision/recall, FID∞/IS∞, density/coverage and memorization on one
feature extractor.

Metric formulas are torch-fidelity's where it has them (:mod:`genbench.metrics.fidelity` says which are not); see
:mod:`genbench.metrics.evaluator` for the record, :mod:`genbench.metrics.protocol` for what a protocol id names,
:mod:`genbench.metrics.store` for where scores go and :mod:`genbench.metrics.memorization` for the memorization
score's definition.
"""

from genbench.metrics.config import MetricsConfig, check_metrics
from genbench.metrics.evaluator import (
    CONTRACT_FIELDS,
    ImageSet,
    Plan,
    evaluate_images,
    evaluate_model,
    images_from_datamodule,
    images_from_path,
    images_from_tensor,
    model_sampler,
    plan_evaluation,
    plan_model_evaluation,
    plan_evaluations,
    plan_model_evaluations,
    run_model_evaluation,
    run_model_evaluations,
    sample_images,
    score_images,
)
from genbench.metrics.store import write_score

__all__ = [
    "CONTRACT_FIELDS",
    "ImageSet",
    "MetricsConfig",
    "Plan",
    "check_metrics",
    "evaluate_images",
    "evaluate_model",
    "images_from_datamodule",
    "images_from_path",
    "images_from_tensor",
    "model_sampler",
    "plan_evaluation",
    "plan_model_evaluation",
    "plan_evaluations",
    "plan_model_evaluations",
    "run_model_evaluation",
    "run_model_evaluations",
    "sample_images",
    "score_images",
    "write_score",
]
