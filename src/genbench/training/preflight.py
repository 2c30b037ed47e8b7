"""Checks of a train config that need nothing loaded, built or written: bad input fails here, in one clear line.

Hydra types a command-line value by its look (``seed=abc`` is a string, ``trainer.log_every_n_steps=0`` an int), and
most keys reach code that fails late: after data loading, inside Lightning's Trainer or at the first optimizer step,
with a traceback. Here each key that ``genbench.train`` reads itself gets its type and range checked, and keys that a
library reads are put to that library's own rule (Lightning's precision, devices, strategies and Trainer arguments;
torch's optimizers, built here on one dummy parameter). The data module and the model check their own keys when built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from genbench.errors import GenbenchError
from genbench.training.speed import optimizer_kwargs, reconcile_fused_optimizer, resolve_precision, speed_switches

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range
RESUME_MODES = ("auto", "must", "never")
# Ours, read by train.py: not Trainer arguments (see train.RUN_KEYS).
TRAINER_RUN_KEYS = ("checkpoint_every_n_steps", "checkpoint_every_n_minutes")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value(cfg: DictConfig, key: str) -> object:
    return OmegaConf.select(cfg, key, default=None)


def _require(cfg: DictConfig, key: str, ok: Callable[[object], bool], expected: str, nullable: bool = False) -> None:
    value = _value(cfg, key)
    if (value is None and nullable) or (value is not None and ok(value)):
        return
    raise GenbenchError(f"{key}={value if value is not None else 'null'}; expected {expected}")


def positive_int(value: object) -> bool:
    return _is_int(value) and value >= 1


def non_negative_int(value: object) -> bool:
    return _is_int(value) and value >= 0


def positive_number(value: object) -> bool:
    return _is_number(value) and value > 0


def check_run_keys(cfg: DictConfig) -> None:
    _require(cfg, "seed", lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]")
    _require(cfg, "resume", lambda v: v in RESUME_MODES, " or ".join(RESUME_MODES))
    _require(cfg, "evaluate", lambda v: isinstance(v, bool), "true or false")


def check_data_keys(cfg: DictConfig) -> None:
    """What the data module reads as numbers or flags (it checks sizes, channels and resize modes when built)."""
    _require(cfg, "data.batch_size", positive_int, "a positive integer")
    _require(cfg, "data.subset", positive_int, "a positive number of images or null", nullable=True)
    _require(cfg, "data.val_size", non_negative_int, "a number of images >= 0")
    _require(cfg, "data.num_workers", non_negative_int, "a number of loader processes >= 0")
    _require(cfg, "data.image_size", _is_int, "an integer")
    for key in ("data.flip", "data.on_device"):
        _require(cfg, key, lambda v: isinstance(v, bool), "true or false")


def check_trainer_keys(cfg: DictConfig) -> None:
    _require(cfg, "trainer.log_every_n_steps", positive_int, "a positive number of steps")
    _require(cfg, "trainer.checkpoint_every_n_steps", positive_int, "a positive number of steps or null", nullable=True)
    _require(cfg, "trainer.checkpoint_every_n_minutes", positive_number, "a positive number of minutes or null",
             nullable=True)  # fmt: skip
    _require(cfg, "trainer.gradient_clip_val", lambda v: _is_number(v) and v >= 0, "a number >= 0 or null",
             nullable=True)  # fmt: skip
    accepted = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    for key in cfg.trainer:
        if key not in accepted and key not in TRAINER_RUN_KEYS and key != "_target_":
            raise GenbenchError(f"trainer.{key} is not an argument of pytorch_lightning.Trainer")


def check_hardware_keys(cfg: DictConfig) -> None:
    """Lightning's own rules for precision, strategy and devices, asked before any Trainer is built."""
    from lightning_fabric.connector import _convert_precision_to_unified_args  # the rule the Trainer applies
    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator
    from pytorch_lightning.strategies import StrategyRegistry

    hw = cfg.hardware
    _require(cfg, "hardware.accelerator", lambda v: v in ("cpu", "gpu", "cuda"), "cpu or gpu")
    if hw.accelerator != "cpu" and not torch.cuda.is_available():
        raise GenbenchError(f"hardware={hw.get('name', hw.accelerator)} needs a CUDA GPU and none is visible; "
                            "use hardware=cpu")  # fmt: skip
    for key, value in speed_switches(hw).items():
        if not isinstance(value, bool):
            raise GenbenchError(f"hardware.{key}={value}; expected true or false")
    resolve_precision(cfg)  # auto -> what this machine runs best, before anything is written (training/speed.py)
    reconcile_fused_optimizer(cfg)
    try:
        _convert_precision_to_unified_args(hw.precision)
    except ValueError as exc:
        raise GenbenchError(f"hardware.precision={hw.precision}: {exc}") from None
    strategies = ("auto", *StrategyRegistry.available_strategies())
    _require(cfg, "hardware.strategy", lambda v: v in strategies, f"auto or one of {', '.join(strategies[1:])}")
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
    device = "cuda" if cfg.hardware.accelerator != "cpu" and torch.cuda.is_available() else "cpu"
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
    check_run_keys(cfg)
    check_data_keys(cfg)
    check_trainer_keys(cfg)
    check_hardware_keys(cfg)
    check_optimizers(cfg)
    check_networks(cfg)
    _require(cfg, "callbacks.sample_grid.every_n_steps", positive_int, "a positive number of steps or null",
             nullable=True)  # fmt: skip
    _require(cfg, "callbacks.sample_grid.n", positive_int, "a positive number of images")
