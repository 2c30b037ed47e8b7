"""Timing helpers of the benchmark suite: interleaved rounds, medians, the machine's matmul peak, FLOP counts.

Every comparison runs its contenders in the same process, alternating them round by round (ABBA order, so a
machine that speeds up or slows down during the run favours neither), and reports the median over rounds.
"""

from __future__ import annotations

import platform
import re
import statistics
import time
from contextlib import nullcontext
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], float | None], device: torch.device) -> float:
    """Seconds ``run`` takes; a run that returns a float reports its own timed seconds (it left out a warm-up)."""
    sync(device)
    started = time.perf_counter()
    own = run()
    sync(device)
    return own if isinstance(own, float) else time.perf_counter() - started


def interleaved(contenders: dict[str, tuple[Callable[[], float | None], int]], rounds: int, device: torch.device) -> dict:
    """Throughput of each contender, measured in ``rounds`` alternating rounds (first round's order reversed next).

    ``contenders``: name -> (run, units of work per run). Returns name -> {"median": units/s, "rounds": [...]}.
    """
    per_round: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            run, units = contenders[name]
            per_round[name].append(units / timed(run, device))
    return {name: {"median": statistics.median(values), "rounds": [round(v, 3) for v in values]}
            for name, values in per_round.items()}  # fmt: skip


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int | None = None, repeats: int = 5) -> float:
    """This machine's measured dense matmul rate in GFLOP/s (best of ``repeats``): what "fraction of peak" divides by."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a[:64] @ b  # warm-up (kernel selection, thread pool start)
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - started)
        spent += best
        if spent > 2.0:  # a CPU without native bf16 emulates it, ~50x slower: one or two products say enough
            break
    return 2 * size**3 / best / 1e9


def count_flops(run: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``run`` (matmuls and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def autocast(precision: str, device: torch.device):
    """The autocast context of a Lightning precision string (``bf16-mixed``, ``16-mixed``; else none)."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict:
    """The machine a result belongs to, and its file-name slug (``cpu-amd-epyc-9r14-2c``, ``nvidia-h100-80gb-hbm3``)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        slug = name
        extra = {"gpu": name, "cuda": torch.version.cuda, "gpu_count": torch.cuda.device_count()}
    else:
        name = cpu_model()
        slug = f"cpu-{name}-{torch.get_num_threads()}c"
        extra = {}
    slug = re.sub(r"\((r|tm)\)|\bprocessor\b|\b\d+-core\b|\bwith\b.*", "", slug, flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-")
    return {"slug": slug, "device": device.type, "name": name, "threads": torch.get_num_threads(),
            "cpu": cpu_model(), **extra}  # fmt: skip
