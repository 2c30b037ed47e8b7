"""EMA of the sampling network, specified in images as EDM does (Karras et al. 2022, training_loop.py).

A decay per update ties the averaging horizon to the batch size: 0.999 averages over ~44k images at batch 64 but
~177k at batch 256. A half-life in images does not: after each batch of ``b`` images the EMA keeps
``beta = 0.5 ** (b / half_life_images)`` of itself, so the weight left on any past parameters after N more images
is 0.5 ** (N / half_life_images) whatever the batch size. The ramp-up caps the half-life at ``rampup_ratio`` times
the images seen so far, so short runs average over their recent past instead of their random start.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from genbench.errors import GenbenchError


def ema_beta(batch_images: int, images_seen: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """The share of the old EMA kept by an update on ``batch_images`` images after ``images_seen`` images."""
    halflife = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife = min(halflife, images_seen * rampup_ratio)
    return 0.5 ** (batch_images / max(halflife, 1e-8))


def checked_ema_settings(halflife_kimg, rampup_ratio) -> tuple[float, float | None]:
    try:
        halflife = float(halflife_kimg)
        ratio = None if rampup_ratio is None else float(rampup_ratio)
        ok = halflife > 0 and (ratio is None or ratio > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise GenbenchError(f"model.ema_halflife_kimg={halflife_kimg}, model.ema_rampup_ratio={rampup_ratio}; expected "
                            "a positive half-life in thousands of images and a positive ratio (null: no ramp-up)")  # fmt: skip
    return halflife, ratio


class ImageEMA(AveragedModel):
    """``torch.optim.swa_utils.AveragedModel`` whose decay comes from :func:`ema_beta` at each update.

    Buffers are averaged too (``use_buffers``); integer buffers such as BatchNorm's counters are copied.
    """

    def __init__(self, net: nn.Module, halflife_kimg: float, rampup_ratio: float | None):
        super().__init__(net, multi_avg_fn=self._lerp, use_buffers=True)
        self.halflife_kimg, self.rampup_ratio = float(halflife_kimg), rampup_ratio
        self._beta = 0.0
        self.requires_grad_(False)

    @torch.no_grad()
    def _lerp(self, ema_params, current_params, num_averaged) -> None:
        floats = [(e, c) for e, c in zip(ema_params, current_params) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [c for _, c in floats], 1.0 - self._beta)
        for e, c in zip(ema_params, current_params):
            if not e.is_floating_point():
                e.copy_(c)

    def step(self, net: nn.Module, batch_images: int, images_seen: int) -> None:
        """Average ``net`` in after a batch of ``batch_images``; ``images_seen`` counts the images before it.

        The first update copies ``net`` (AveragedModel's rule, and EDM's: the ramp-up gives beta = 0 at zero images).
        """
        self._beta = ema_beta(batch_images, images_seen, self.halflife_kimg, self.rampup_ratio)
        self.update_parameters(net)
