"""Training throughput of each family on this machine, as img/s and as a ratio to a reference workload.

    .venv/bin/python benchmarks/train_throughput.py [--steps 30] [--families NAME ...] [--hardware cpu]

Each family trains ``--steps`` batches through the real entry point (Lightning loop, EMA, logging) on
Fashion-MNIST; run.json's img/s is printed beside the same machine's speed on a fixed conv reference measured
in the same process, so figures from noisy or different machines can be compared as ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from genbench.models import families

ROOT = Path(__file__).resolve().parents[1]


def reference_img_per_s(batch: int = 64, repeats: int = 5) -> float:
    """A fixed 3-layer conv forward+backward at 28 px: the machine's yardstick."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.SiLU(),
        torch.nn.Conv2d(32, 1, 3, padding=1),
    )  # fmt: skip
    x = torch.randn(batch, 1, 28, 28)
    net(x).square().mean().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        net(x).square().mean().backward()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--families", nargs="+", default=families(), help="default: every conf/model/*.yaml")
    parser.add_argument("--hardware", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for family in args.families:
            before = reference_img_per_s()
            subprocess.run(
                [sys.executable, "-m", "genbench.train", f"model={family}", f"hardware={args.hardware}",
                 f"budget.max_steps={args.steps}", f"data.batch_size={args.batch_size}", f"paths.runs_dir={runs}",
                 "callbacks.sample_grid.every_n_steps=null", "logger=none"],
                cwd=ROOT, check=True, capture_output=True,
            )  # fmt: skip
            after = reference_img_per_s()
            record = json.loads((Path(runs) / "default" / f"{family}-seed0" / "run.json").read_text())
            reference = (before + after) / 2
            rows.append((family, record["params"], record["img_per_s"], reference, record["peak_mem_mb"]))
    device = record["hardware"]["device_name"]
    print(f"training throughput on {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.steps} steps")
    print(f"{'family':<10} {'params':>9} {'img/s':>8} {'reference img/s':>16} {'ratio':>7} {'peak MB':>8}")
    for family, params, img_s, reference, mem in rows:
        print(f"{family:<10} {params:>9,} {img_s:>8.1f} {reference:>16.1f} {img_s / reference:>7.3f} {mem:>8.0f}")


if __name__ == "__main__":
    main()
