"""Whether a state dict's weights are all finite: checked before a checkpoint is saved and before one is resumed."""

from __future__ import annotations

import torch


def non_finite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf, at the cost of one host sync."""
    floats = {k: v for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()}
    if not floats:
        return []
    finite = torch.stack([torch.isfinite(v).all() for v in floats.values()]).cpu()
    return [name for name, ok in zip(floats, finite.tolist()) if not ok]
