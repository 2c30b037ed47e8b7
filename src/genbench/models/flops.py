"""The FLOP count's twin: the model a config builds, made afresh to be counted (:mod:`genbench.training.flops` counts
it), so the live model is never touched. Here, above genbench.training, because it builds a model."""

from __future__ import annotations

import torch

from genbench.models import build_model
from genbench.training.flops import TrainFlops, count_training, untouched_random_streams

COUNT_DEVICE = "cpu"  # cheaper than meta for the networks genbench trains on CPUs; meta for big ones (estimate.py)


def twin(model_cfg, image_shape, num_classes: int | None, class_names=None, device: str = COUNT_DEVICE):
    """The model ``model_cfg`` builds for this data, freshly built on ``device`` (``meta``: shapes only)."""
    with untouched_random_streams(), torch.device(device):
        return build_model(model_cfg, list(image_shape), num_classes, class_names)


def training_flops(model_cfg, image_shape, num_classes: int | None, class_names=None,
                   device: str = COUNT_DEVICE) -> TrainFlops:  # fmt: skip
    """The training FLOPs per image of the model ``model_cfg`` builds for this data, counted on its twin."""
    return count_training(twin(model_cfg, image_shape, num_classes, class_names, device))


