"""figures/sampler_cost from real (tiny) runs: a one-pass family is a point, diffusion one curve per sampler with NFE."""

from __future__ import annotations

import csv
import math

import pytest
from conftest import requires_fmnist, train_run
from omegaconf import OmegaConf

from genbench.imageio import read_png_text
from genbench.report.collect import find_runs
from genbench.report.sampler_cost import sampler_cost_figure


@requires_fmnist
def test_sampler_cost_has_a_point_per_one_pass_family_and_a_curve_per_sampler(tmp_path, fmnist):
    runs_dir = tmp_path / "runs" / "cost"
    metrics = ["metrics.extractor=fmnist_classifier", "metrics.n_reference=200"]
    for family in ("vae", "diffusion"):
        record = train_run(runs_dir / f"{family}-seed0", family, "budget.max_steps=2", "evaluate=false", *metrics)
        assert record["status"] == "completed"
    samplers = [{"name": "ddim", "eta": 0.0}, {"name": "ddim", "eta": 1.0}, {"name": "heun"}]
    notes: list[str] = []
    written = sampler_cost_figure(find_runs(runs_dir), tmp_path / "figures", samplers, [1, 2], 20,
                                  OmegaConf.create({}), "cpu", notes)  # fmt: skip
    assert {p.name for p in written} == {"sampler_cost.png", "sampler_cost.pdf", "sampler_cost.csv"}
    with open(tmp_path / "figures" / "sampler_cost.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    curve = [(r["sampler"], int(r["steps"]), int(r["nfe"])) for r in rows if r["family"] == "diffusion"]
    assert curve == [("ddim eta=0", 1, 1), ("ddim eta=0", 2, 2), ("ddim eta=1", 1, 1), ("ddim eta=1", 2, 2),
                     ("heun", 1, 1), ("heun", 2, 3)]  # fmt: skip
    points = [r for r in rows if r["family"] == "vae"]
    assert len(points) == 1 and points[0]["sampler"] == "" and points[0]["nfe"] == "1"
    for r in rows:
        assert math.isfinite(float(r["fid"])) and float(r["seconds_per_1k"]) > 0 and r["n_samples"] == "20"
    assert read_png_text(tmp_path / "figures" / "sampler_cost.png")["genbench:content"] == "FID against sampling cost"
    assert not notes


def test_sampler_cost_needs_a_completed_run(tmp_path):
    from genbench.report.figures import Skipped

    with pytest.raises(Skipped, match="no completed run"):
        sampler_cost_figure([], tmp_path, [{"name": "ddim"}], [1], 10, None, "cpu", [])
