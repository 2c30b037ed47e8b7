"""``make bench``'s tiny mode end to end, so the benchmark suite cannot rot: its JSON's structure, and that every
comparison produced finite positive throughputs (speeds themselves are benchmarks, not tests)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPARISONS = {
    "diffusion_train", "lightning_overhead_diffusion", "gan_train", "lightning_overhead_gan", "sample_ddim2",
    "sample_dpmpp_2m2", "evaluate_100",
}  # fmt: skip


@pytest.mark.slow
def test_tiny_bench_writes_a_stamped_record_with_finite_positive_numbers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROJECT_ROOT": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = tmp_path.glob("*-tiny.json")
    record = json.loads(path.read_text())
    assert path.name == f"{record['hardware']['slug']}-tiny.json" and record["mode"] == "tiny"
    for key in ("torch", "diffusers", "torch_fidelity", "lightning", "git_commit", "date", "precision"):
        assert record[key], key
    assert all(math.isfinite(v) and v > 0 for v in record["peak_gflops"].values())
    assert {r["name"] for r in record["comparisons"]} == COMPARISONS
    for r in record["comparisons"]:
        for side in ("genbench", "peer"):
            assert math.isfinite(r[side]["median"]) and r[side]["median"] > 0, (r["name"], side)
            assert len(r[side]["rounds"]) == 1
        assert r["peer"]["name"] and math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["target_met"] == (r["ratio"] >= r["target_ratio"]) if r["target_ratio"] else r["target_met"] is None
        fraction = r["genbench"].get("fraction_of_peak")
        assert fraction is None or 0 < fraction < 10, (r["name"], fraction)
    assert r["name"] in done.stdout and "ratio" in done.stdout  # the rich table was printed
    assert path.with_suffix(".png").stat().st_size > 0 and path.with_suffix(".pdf").stat().st_size > 0  # and drawn


@pytest.mark.slow
def test_tiny_paper_bench_judges_the_gpu_targets_on_genbench_throughput(tmp_path):
    """``--paper`` (issue 12's H100 study, benchmarks/gpu.sh) at the smoke run's sizes: the paper network at 32x32x3,
    its throughput target applied, and the GPU script still parses."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROJECT_ROOT": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--tiny", "--paper", "--out", str(tmp_path),
                           "metrics.compile=false"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = tmp_path.glob("*-paper-tiny.json")
    record = json.loads(path.read_text())
    assert record["mode"] == "paper-tiny" and "model/size=paper" in record["overrides"]
    rows = {r["name"]: r for r in record["comparisons"]}
    assert set(rows) == {"diffusion_train", "lightning_overhead_diffusion", "sample_ddim2"}
    train = rows["diffusion_train"]
    assert train["settings"]["params"]["genbench"] > 35_000_000 and train["target_throughput"] == 5000.0
    assert train["target_met"] == (train["genbench"]["median"] >= 5000.0) and train["target_ratio"] is None
    assert rows["sample_ddim2"]["genbench"]["compiled"] is False and "alternative" not in rows["sample_ddim2"]["genbench"]
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")]).returncode == 0
