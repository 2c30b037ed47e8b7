"""run.json: the run record of the contract, kept current from start to finish."""

from __future__ import annotations

import hashlib

import datetime as dt
import os
import resource
import subprocess
from pathlib import Path

import torch

from genbench.files import read_json, write_json  # noqa: F401 - run.json is read and written as every JSON file

RUN_JSON = "run.json"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# What makes a run: a change here marks the commit "-dirty". Results, runs and docs are left out, so regenerating
# the committed results/ (which overwrites tracked files) does not taint the stamp of the runs that made them.
CODE_PATHS = (":/src", ":/conf", ":/pyproject.toml", ":/constraints.txt")


def git_commit(where: Path | None = None) -> str | None:
    """HEAD of the checkout genbench runs from, with "-dirty" when its code or configs differ from HEAD."""
    where = where or Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else None
        if commit:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
                                   cwd=where, capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory for GPU runs, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def hardware_info(trainer) -> dict:
    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (os.uname().machine + " CPU")
    return {
        "accelerator": device.type,
        "device_name": name,
        "precision": str(trainer.precision),
        "devices": int(trainer.num_devices),
        "cpu_threads": torch.get_num_threads(),
    }


def speed_info(trainer, pl_module) -> dict:
    """The speed switches a run trained with (``hardware.*``, training/speed.py) and what compiling cost: the
    warm-up's seconds, kept out of ``train_seconds`` and ``img_per_s`` (None without compile, or under DDP where the
    first step compiles inside the budget)."""
    speed = dict(getattr(pl_module, "speed", {}))
    config = (getattr(pl_module, "run_meta", None) or {}).get("config", {})
    return {
        "precision": str(trainer.precision),
        "compile": speed.get("compile", False),
        "compile_seconds": getattr(pl_module, "compile_seconds", None),
        "channels_last": speed.get("channels_last", False),
        "fused_optimizer": speed.get("fused_optimizer", False),
        "on_device": bool(config.get("data", {}).get("on_device", False)),
    }


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 of every tensor in ``module``'s state dict (the EMA copy and buffers too), names and bytes in order: the
    same for the same weights on any machine, whatever the checkpoint file around them (which holds the optimizer,
    timestamps and paths). run.json records it, so a reproduction can say "the same weights" without the checkpoint."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
