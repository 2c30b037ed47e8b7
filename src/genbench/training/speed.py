"""Speed switches of the ``hardware`` group: what the machine does fast, decided before the run folder is written.

``hardware.precision=auto`` becomes ``bf16-mixed`` where the device computes bf16 natively and ``32-true`` elsewhere,
here, before the run folder and its identity are written: precision shapes training, so ``config.yaml`` holds the
value the run used, never ``auto``. ``hardware.compile`` compiles the training networks with ``torch.compile`` and
keeps inductor's caches in one stable folder, so only the first run on a machine pays the cold compilation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

log = logging.getLogger("genbench.speed")
# CPU flags of native bf16 arithmetic (AVX-512 BF16 dot products, AMX tiles); AVX-512 without them (and AVX2, as on
# AMD Zen 3) runs bf16 by conversion to fp32, which gains nothing over fp32 and loses precision.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def cpu_flags() -> set[str] | None:
    """The CPU feature flags Linux reports, or None where /proc/cpuinfo does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def native_bf16(accelerator: str) -> bool:
    """Whether this machine's ``accelerator`` (cpu or gpu) has bf16 arithmetic in hardware."""
    if accelerator != "cpu":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    flags = cpu_flags()
    if flags is None:  # not Linux: torch's own check (oneDNN's bf16 path on this CPU)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def resolve_precision(cfg: DictConfig) -> None:
    """``hardware.precision=auto`` replaced in ``cfg`` by what this machine runs best (logged)."""
    if cfg.hardware.get("precision") != "auto":
        return
    accelerator = cfg.hardware.get("accelerator", "cpu")
    precision = "bf16-mixed" if native_bf16(accelerator) else "32-true"
    with open_dict(cfg):
        cfg.hardware.precision = precision
    # debug, not info: preflight prints nothing before a command is accepted; config.yaml and run.json record it
    log.debug("hardware.precision=auto: %s (%s bf16 on this %s)", precision,
             "native" if precision == "bf16-mixed" else "no native", accelerator)  # fmt: skip


def compile_cache_dir() -> Path:
    """The folder inductor keeps compiled graphs and kernels in: ``$TORCHINDUCTOR_CACHE_DIR`` when set, else
    ``$XDG_CACHE_HOME/genbench/inductor`` (``~/.cache/genbench/inductor``). Set for this process before anything
    compiles, so every run on the machine reuses the FX graph and AOTAutograd caches of the runs before it."""
    if COMPILE_CACHE_ENV not in os.environ:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ[COMPILE_CACHE_ENV] = str(base / "genbench" / "inductor")
    return Path(os.environ[COMPILE_CACHE_ENV])


SWITCHES = ("compile", "channels_last", "fused_optimizer")


def reconcile_fused_optimizer(cfg: DictConfig) -> None:
    """Fused optimizers off when mixed precision and gradient clipping meet (after :func:`resolve_precision`).

    Lightning's mixed-precision plugin refuses to clip the gradients of an optimizer that could unscale them
    itself (a fused one) and stops the run at its first step, bf16 included. The plain update computes the same
    thing, so ``cfg`` gets ``hardware.fused_optimizer=false`` (config.yaml and run.json record it) and the run goes on.
    """
    hw, trainer = cfg.hardware, cfg.get("trainer") or {}
    mixed = str(hw.get("precision", "")).endswith("-mixed")
    if mixed and trainer.get("gradient_clip_val") and hw.get("fused_optimizer", False):
        with open_dict(cfg):
            hw.fused_optimizer = False
        log.info("hardware.fused_optimizer=false: %s with trainer.gradient_clip_val cannot use fused optimizers",
                 hw.precision)


def speed_switches(hardware: DictConfig) -> dict[str, bool]:
    """``hardware.compile``, ``channels_last`` and ``fused_optimizer``; a hardware config without one (written
    before these keys existed) has it off."""
    return {key: hardware.get(key, False) for key in SWITCHES}


def optimizer_kwargs(fused: bool) -> dict:
    """Extra keywords for each ``torch.optim`` factory: ``fused=True`` runs the whole update as one kernel per
    parameter group (Adam, AdamW and SGD on CPU and CUDA)."""
    return {"fused": True} if fused else {}
