"""The one device choice: ``auto`` (CUDA when a GPU is visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch

from genbench.errors import GenbenchError


def cuda_available() -> bool:
    return torch.cuda.is_available()


def auto_device() -> torch.device:
    return torch.device("cuda" if cuda_available() else "cpu")


def pick_device(name, key: str = "device") -> torch.device:
    """The torch device for the config value ``key=name``, or a GenbenchError naming ``key`` and the choices."""
    name = str(name)
    if name == "auto":
        return auto_device()
    if name != "cpu" and not name.startswith("cuda"):
        raise GenbenchError(f"{key}={name}; expected auto, cpu or cuda")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise GenbenchError(f"{key}={name} is not a torch device (expected auto, cpu or cuda)") from exc
    if device.type == "cuda" and not cuda_available():
        raise GenbenchError(f"{key}={name} but no CUDA GPU is visible; use {key}=cpu or auto")
    return device
