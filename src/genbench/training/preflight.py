"""Checks of a train config that need nothing loaded, built or written: bad input fails here, in one clear line.

Every key's type, range and choices are the schema's (:mod:`genbench.schema`, checked first). What no type can say
stays here as named checks, each put to the rule of the library that reads the key: Lightning's precision, devices
and strategies; torch's optimizers, built on one dummy parameter; every network, built on the meta device at the
data's image size.
"""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from genbench.devices import pick_device
from genbench.errors import GenbenchError
from genbench.schema import check_config
from genbench.training.speed import optimizer_kwargs, reconcile_fused_optimizer, resolve_precision, speed_switches

def _value(cfg: DictConfig, key: str) -> object:
    return OmegaConf.select(cfg, key, default=None)


def check_hardware_keys(cfg: DictConfig) -> None:
    """Lightning's own rules for precision, strategy and devices, asked before any Trainer is built."""
    from lightning_fabric.connector import _convert_precision_to_unified_args  # the rule the Trainer applies
    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator
    from pytorch_lightning.strategies import StrategyRegistry

    hw = cfg.hardware
    if hw.accelerator != "cpu" and not torch.cuda.is_available():
        raise GenbenchError(f"hardware={hw.get('name', hw.accelerator)} needs a CUDA GPU and none is visible; "
                            "use hardware=cpu")  # fmt: skip
    resolve_precision(cfg)  # auto -> what this machine runs best, before anything is written (training/speed.py)
    reconcile_fused_optimizer(cfg)
    try:
        _convert_precision_to_unified_args(hw.precision)
    except ValueError as exc:
        raise GenbenchError(f"hardware.precision={hw.precision}: {exc}") from None
    strategies = ("auto", *StrategyRegistry.available_strategies())
    if hw.strategy not in strategies:
        raise GenbenchError(f"hardware.strategy={hw.strategy}; expected auto or one of {', '.join(strategies[1:])}")
    devices = OmegaConf.to_container(hw.devices) if isinstance(hw.devices, ListConfig) else hw.devices
    if devices == "auto":
        return
    accelerator = CPUAccelerator if hw.accelerator == "cpu" else CUDAAccelerator
    try:
        accelerator.parse_devices(devices)
    except Exception as exc:  # noqa: BLE001 - Lightning raises TypeError, ValueError or its own for bad devices
        expected = "a positive number of CPU processes" if hw.accelerator == "cpu" else (
            "a number of GPUs (-1: all), or a list of GPU ids")  # fmt: skip
        raise GenbenchError(f"hardware.devices={devices}; expected {expected} or auto "
                            f"({' '.join(str(exc).split())})") from None  # fmt: skip


def check_optimizers(cfg: DictConfig) -> None:
    """Build every ``torch.optim`` node under ``model`` on a dummy parameter: torch checks lr, betas, eps, ... and
    whether it has a fused kernel for this device when ``hardware.fused_optimizer`` asks for one."""
    extra = optimizer_kwargs(speed_switches(cfg.hardware)["fused_optimizer"] is True)
    device = pick_device("cpu" if cfg.hardware.accelerator == "cpu" else "auto")
    nodes = [(key, node) for key, node in cfg.model.items()
             if isinstance(node, DictConfig) and str(node.get("_target_", "")).startswith("torch.optim.")]  # fmt: skip
    for key, node in nodes:
        try:
            instantiate(node)([torch.nn.Parameter(torch.zeros(1, device=device))], **extra)
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad optimizer setting
            cause = exc.__cause__ or exc
            settings = ", ".join(f"{k}={v}" for k, v in node.items() if not str(k).startswith("_"))
            fused = " with hardware.fused_optimizer=true (set it false for this optimizer)" if extra else ""
            raise GenbenchError(f"model.{key} ({node._target_}: {settings}) is not a usable optimizer{fused}: "
                                f"{type(cause).__name__}: {' '.join(str(cause).split())}") from None  # fmt: skip


def check_networks(cfg: DictConfig) -> None:
    """Build every network of ``model`` (its ``genbench.nets`` nodes) on the meta device at ``data.image_size``: no memory,
    no data, and a network's own refusal (an unsupported image size, attention at a resolution the U-Net does not have
    there, an unknown argument) becomes one line before anything is loaded."""
    nodes = [(key, node) for key, node in cfg.model.items()
             if isinstance(node, DictConfig) and str(node.get("_target_", "")).startswith("genbench.nets.")]  # fmt: skip
    channels = _value(cfg, "data.channels") or 1
    for key, node in nodes:
        # spectral norm's power iteration costs seconds on meta tensors and cannot fail on a valid shape
        extra = {"spectral_norm": False} if "spectral_norm" in node else {}
        try:
            with torch.device("meta"):
                instantiate(node, **extra)(image_channels=channels, image_size=cfg.data.image_size, num_classes=None)
        except (TypeError, ValueError) as exc:
            cause = exc.__cause__ or exc
            raise GenbenchError(f"model.{key} ({node._target_}) at data.image_size={cfg.data.image_size}: "
                                f"{' '.join(str(cause).split())}") from None  # fmt: skip


def check_train_config(cfg: DictConfig) -> None:
    """Every check of a train config that needs nothing loaded; raises GenbenchError for the first bad key."""
    check_config(cfg, "train")
    check_hardware_keys(cfg)
    check_optimizers(cfg)
    check_networks(cfg)
