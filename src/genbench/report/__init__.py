"""``python -m genbench.report sweep=DIR out=DIR``: paper-style tables and figures from every run under a sweep.

Reads top to bottom: collect the runs, build the tables, write them (Markdown, LaTeX, CSV), draw the figures,
stamp the output with hardware and commits, log the comparison to W&B when asked, print the Markdown.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from genbench.cli import hydra_entry
from genbench.devices import pick_device
from genbench.errors import GenbenchError
from genbench.files import write_json, write_text
from genbench.schema import check_config
from genbench.report import figures as fig
from genbench.report.collect import Run, find_runs, missing_jobs
from genbench.report.records import copy_records
from genbench.report.sampler_cost import sampler_cost_figure
from genbench.report.tables import Summary, build_summary, excluded_lines, run_rows, table_rows, to_csv, to_latex, to_markdown
from genbench.training.record import git_commit

log = logging.getLogger("genbench.report")
FIGURE_STEMS = ("samples", "fid_vs_compute", "throughput", "sampler_cost")
# The figures drawn per capable family: <prefix><sampler>_steps, <prefix><sampler>_fid.csv, <family>_interpolation
FAMILY_FIGURES = re.compile(r".+_steps\.(png|pdf)|.+_fid\.csv|.+_interpolation\.(png|pdf)")


def draw_figures(runs: list[Run], cfg: DictConfig, out: Path, device, notes: list[str]) -> list[Path]:
    """Every figure that is switched on and can be drawn; one that cannot becomes a note, never a failure of the report."""
    r = cfg.report
    fig_dir = out / "figures"
    chosen = fig.first_seed_runs(runs)

    def each_capable(capability: str, says: str, draw_one) -> Callable[[], list[Path]]:
        """A figure drawn for every chosen family that has ``capability``; ``draw_one(run, prefix)`` draws one
        family's, ``prefix`` (``FAMILY_``, or empty when one family draws it) keeping several apart."""

        def job() -> list[Path]:
            found = fig.capable(chosen, capability)
            if not found:
                raise fig.Skipped(f"no completed run of a family that {says}")
            return [path for family, run in found.items() for path in draw_one(run, f"{family}_" if len(found) > 1 else "")]

        return job

    fid_steps = None if r.ddim_fid_steps is None else list(r.ddim_fid_steps)
    jobs = {
        "samples": lambda: fig.sample_grids(runs, out, fig_dir, r.grid_rows, r.seed, device),
        "ddim": each_capable(  # seeds x step counts of the family's deterministic sampler, beside FID against steps
            "has_sampler_steps", "takes a sampler with steps",
            lambda run, prefix: fig.steps_figure(run, fig_dir, prefix, list(r.ddim_steps), list(r.ddim_seeds), fid_steps,
                                                 r.ddim_fid_n, _resolved(cfg.get("metrics")), device, notes)),
        "interpolation": each_capable(  # one interpolation per family, so the file already names it: no prefix
            "interpolates", "interpolates",
            lambda run, prefix: fig.interpolation_figure(run, fig_dir, r.interp_pairs, r.interp_steps, r.seed, device)),
        "compute_curves": lambda: fig.compute_curves_figure(runs, fig_dir),
        "throughput": lambda: fig.throughput_figure(runs, fig_dir),
        "sampler_cost": lambda: sampler_cost_figure(  # FID against seconds per 1k samples: points and sampler curves
            runs, fig_dir, [dict(s) for s in _resolved(r.cost_samplers)], list(r.cost_steps), r.cost_n,
            _resolved(cfg.get("metrics")), device, notes),
    }
    written = []
    for name, draw in jobs.items():
        if not r.figures or not r[name]:
            continue
        try:
            paths = draw()
        except fig.Skipped as exc:
            notes.append(f"{name} figure skipped: {exc}.")
            continue
        written += paths
        log.info("%s: %s", name, ", ".join(str(p.relative_to(out)) for p in paths))
    # A figure from an earlier report on other runs must not pass for one of these.
    candidates = [out / "samples.png", out / "samples.pdf"] + (list(fig_dir.iterdir()) if fig_dir.is_dir() else [])
    for path in candidates:
        ours = path.name.startswith(FIGURE_STEMS) or FAMILY_FIGURES.fullmatch(path.name)
        if path not in written and path.is_file() and ours:
            path.unlink()
    return written


def _resolved(node):
    return None if node is None else OmegaConf.create(OmegaConf.to_container(node, resolve=True))


def portable_path(path: str | Path) -> str:
    """``path`` without the machine it was made on: relative to the working directory when inside it (as
    ``runs/fashion_mnist_default``), else only its name. Committed results must not carry one machine's folders."""
    resolved = Path(path).expanduser().resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return resolved.name


def stamp(cfg: DictConfig, runs: list[Run], summary: Summary, written: list[Path], notes: list[str]) -> dict:
    """report.json: where the numbers came from (sweep, commits, hardware) next to the numbers themselves."""
    return {
        "sweep": portable_path(cfg.sweep),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "report_git_commit": git_commit(),
        "run_git_commits": sorted({str(r.record.get("git_commit")) for r in runs}),
        "hardware": [json.loads(h) for h in sorted({json.dumps(r.record.get("hardware") or {}, sort_keys=True) for r in runs})],
        "runs": len(runs),
        "groups": table_rows(summary),
        "not_in_tables": excluded_lines(summary),
        "rank_agreement": [{"tables": list(a.tables), "extractors": list(a.extractors), "rows": a.rows,
                            "kendall_tau": a.tau, "disagree": a.disagree} for a in summary.agreements],
        "notes": notes,
        "files": sorted(str(p.relative_to(Path(cfg.out))) for p in written),
    }


def report(cfg: DictConfig) -> dict:
    check_config(cfg, "report")  # every key's type and range (genbench.schema), before anything is read
    sweep, out = Path(cfg.sweep).expanduser(), Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():  # checked first: a report that cannot be written is not worth drawing
        raise GenbenchError(f"out={out} is a file; expected a folder for the report (new, or one of an earlier report)")
    runs = find_runs(sweep)
    device = pick_device(cfg.report.device, "report.device")  # bad input fails here, before anything is written
    missing = missing_jobs(sweep, runs)
    log.info("%d runs under %s (%s)%s", len(runs), sweep, ", ".join(f"{r.family}/{r.seed}:{r.status}" for r in runs),
             f"; {len(missing)} sweep job(s) left no run.json" if missing else "")  # fmt: skip
    summary = build_summary(runs, missing)
    notes = list(summary.notes)

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # written last: it marks a finished report, never a stale one
    markdown = to_markdown(summary)
    written = [
        write_text(out / "table.md", markdown),
        write_text(out / "table.tex", to_latex(summary)),
        write_text(out / "table.csv", to_csv(table_rows(summary))),
        write_text(out / "runs.csv", to_csv(run_rows(runs))),
    ]
    written += copy_records(runs, out)  # the folder is its own record: genbench.reproduce retrains from it
    written += draw_figures(runs, cfg, out, device, notes)
    for note in notes[len(summary.notes) :]:
        log.info("note: %s", note)
    record = stamp(cfg, runs, summary, written, notes)
    if cfg.report.wandb:
        from genbench.report.wandb_log import log_report

        groups = sorted({str((r.config or {}).get("name") or "") for r in runs} - {""})
        group = groups[0] if len(groups) == 1 else sweep.resolve().name
        images = [p for p in written if p.suffix == ".png"]
        folder = log_report(summary, out, images, group, cfg.report.wandb_project)
        record["wandb_run"] = None if folder is None else str(folder)
    write_json(out / "report.json", record)
    print(markdown, end="")
    return record


main = hydra_entry(report, config_name="report")

__all__ = ["main", "report"]
