"""figures/sampler_cost: sample quality against sampling cost, every family on one pair of axes.

FID against seconds per 1,000 samples (log x), each run's checkpoint re-sampled and re-scored under one metrics
setting: a model that samples in one pass is a point; a model that takes a sampler (``takes_sampler``) is one
curve per sampler over its step counts, each point labelled with its network evaluations. A ``report.cost_samplers``
entry with ``families`` is drawn for those families only (solvers meant for one path, say).
``figures/sampler_cost.csv`` holds the numbers. Drawn from the first completed run of each family.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter
from omegaconf import DictConfig, OmegaConf

from genbench.errors import GenbenchError
from genbench.report import figures as fig

log = logging.getLogger(__name__)
SAMPLER_STYLES = {"ddpm": "s", "ddim": "o", "dpmpp_2m": "D", "euler": "v", "heun": "^", "midpoint": "P", "dopri5": "X"}


def sampler_label(sampler: dict) -> str:
    """``ddim eta=0.5``, ``heun sigma_max=80``: the name and whatever else the entry sets."""
    extra = [f"{k}={v:g}" for k, v in sampler.items() if k in ("eta", "sigma_max") and v is not None]
    return " ".join([sampler["name"], *extra])


def measure(runs, samplers: list[dict], steps: list[int], n: int, fallback_metrics: DictConfig | None,
            device, notes: list[str]) -> list[dict]:  # fmt: skip
    """One row per (family, sampler, steps): FID, seconds per 1,000 samples and NFE on ``n`` samples."""
    from genbench.metrics import evaluate_model

    rows = []
    for family, run in fig.first_seed_runs(runs).items():
        model, run_cfg = fig.load(run, device)
        metrics = run_cfg.get("metrics") or fallback_metrics
        if metrics is None:
            notes.append(f"sampler_cost figure: {family} left out, neither its run nor the report has a metrics config.")
            continue
        metrics = OmegaConf.merge(metrics, {"n_samples": int(n), "memorization": False, "device": str(device)})
        datamodule = fig.build_datamodule(run_cfg)
        guidance = fig.sampler_kwargs(run_cfg)["guidance_scale"]
        settings = [None]
        if model.takes_sampler:  # every sampler meant for this family, at every step count
            chosen = [{k: v for k, v in s.items() if k != "families"} for s in samplers
                      if s.get("families") is None or family in s["families"]]  # fmt: skip
            settings = [{**s, "steps": int(k), "guidance_scale": guidance} for s in chosen for k in steps]
        for sampler in settings:
            record = evaluate_model(model, metrics, datamodule, sampler)
            row = {"family": family, "setting": run.setting, "seed": run.seed,
                   "sampler": sampler_label(sampler) if sampler else "", "steps": sampler["steps"] if sampler else "",
                   "nfe": record.get("sampler_nfe", 1 if sampler is None else ""), "fid": round(float(record["fid"]), 4),
                   "seconds_per_1k": record["sample_seconds_per_1k"], "n_samples": int(n), "device": str(device),
                   "protocol": record.get("protocol", "")}  # fmt: skip
            log.info("sampler_cost: %s %s %s steps: FID %.2f, %.2f s per 1k", family, row["sampler"], row["steps"],
                     row["fid"], row["seconds_per_1k"])  # fmt: skip
            rows.append(row)
    return rows


def sampler_cost_figure(runs, fig_dir: Path, samplers: list[dict], steps: list[int], n: int,
                        fallback_metrics: DictConfig | None, device, notes: list[str]) -> list[Path]:  # fmt: skip
    if not fig.first_seed_runs(runs):
        raise fig.Skipped("no completed run with a checkpoint")
    if n <= 0:
        raise fig.Skipped("report.sampler_cost_n=0")
    try:
        rows = measure(runs, samplers, steps, n, fallback_metrics, device, notes)
    except (ImportError, GenbenchError) as exc:  # no extractor weights here, say
        raise fig.Skipped(f"the evaluator could not run ({exc})") from exc
    if not rows:
        raise fig.Skipped("no run could be scored")
    fig_, ax = plt.subplots(figsize=(6.4, 4.2))
    for family in dict.fromkeys(r["family"] for r in rows):
        color = fig.family_color(family)
        points = [r for r in rows if r["family"] == family and not r["sampler"]]
        for r in points:
            ax.plot(r["seconds_per_1k"], r["fid"], "*", ms=13, color=color, label=family)
        for name in dict.fromkeys(r["sampler"] for r in rows if r["family"] == family and r["sampler"]):
            curve = sorted((r for r in rows if r["family"] == family and r["sampler"] == name), key=lambda r: r["nfe"])
            marker = SAMPLER_STYLES.get(name.split()[0], "o")
            ax.plot([r["seconds_per_1k"] for r in curve], [r["fid"] for r in curve], marker + "-", ms=4, lw=1.2,
                    label=f"{family}: {name}", alpha=0.85)  # fmt: skip
            for r in curve:
                ax.annotate(str(r["nfe"]), (r["seconds_per_1k"], r["fid"]), fontsize=6, xytext=(2, 2),
                            textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    for axis in (ax.xaxis,):  # 20, 30, 50 rather than 2x10^1
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
    fids = [r["fid"] for r in rows]
    if min(fids) > 0 and max(fids) / min(fids) > 10:
        ax.set_yscale("log")
    ax.set_xlabel(f"seconds per 1,000 samples ({device})")
    ax.set_ylabel(f"FID ({n} samples)")
    ax.set_title("quality against sampling cost (labels: network evaluations per sample)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig_.tight_layout()
    written = fig.save_figure(fig_, fig_dir / "sampler_cost", fig.plot_provenance(runs, "FID against sampling cost"))
    written.append(fig.write_rows(fig_dir / "sampler_cost.csv", rows))
    return written
