"""The report's figures, PNG and PDF, each drawn from the runs' own records and checkpoints.

Generated images come from ``load_checkpoint(...).sample`` only (the one interface every family implements), from
a fixed seed, with each run's own sampler config. Every PNG carries the provenance text chunks of
:func:`genbench.imageio.provenance_chunks`; the PDFs carry the same facts in their Subject and Keywords.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from genbench.errors import GenbenchError  # noqa: E402
from genbench.files import atomic_open  # noqa: E402
from genbench.imageio import make_grid, provenance_chunks, to_uint8  # noqa: E402
from genbench.sampling import sampler_settings  # noqa: E402
from genbench.report.collect import Run  # noqa: E402

log = logging.getLogger(__name__)
# A family's colour in every figure. The palette keeps the colours the default families have always had; a family
# not in it takes the next unused Tableau colour by its place among genbench's families, so it always gets one.
PALETTE = {"gan": "tab:red", "vae": "tab:blue", "diffusion": "tab:green", "flow": "tab:purple",
           "latent_diffusion": "tab:olive"}
SPARE_COLORS = [c for c in ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
                if c not in PALETTE.values()]  # fmt: skip


def family_color(family: str) -> str:
    if family in PALETTE:
        return PALETTE[family]
    from genbench.models import families

    others = [f for f in families() if f not in PALETTE]
    index = others.index(family) if family in others else len(others)  # a family from elsewhere: after the known
    return SPARE_COLORS[index % len(SPARE_COLORS)]


def capable(chosen: dict[str, Run], capability: str) -> dict[str, Run]:
    """The runs of ``chosen`` whose family has ``capability`` (a ``GenerativeModule`` class attribute or classmethod,
    e.g. ``interpolates``, ``has_sampler_steps``), read from the class the run's config names, without loading it."""
    from genbench.models import family_class

    found = {}
    for family, run in chosen.items():
        target = ((run.config or {}).get("model") or {}).get("_target_")
        try:
            value = getattr(family_class(family, target), capability)
        except GenbenchError:  # a run of a family this checkout does not know: it draws nothing it cannot
            continue
        if value() if callable(value) else value:
            found[family] = run
    return found


class Skipped(Exception):
    """A figure that cannot be drawn from these runs; the message says why (it becomes a note)."""


# ---------------------------------------------------------------------------------------------- writing
def save_figure(fig, stem: Path, provenance: dict[str, str]) -> list[Path]:
    """``stem.png`` with ``provenance`` as PNG text chunks and ``stem.pdf``; each written under a temporary name first."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    pdf_info = {"Title": stem.name, "Creator": "genbench", "Subject": "AI-generated: " + provenance.get("AI-generated", ""),
                "Keywords": "; ".join(f"{k}={v}" for k, v in provenance.items())}  # fmt: skip
    written = []
    for suffix, metadata in ((".png", provenance), (".pdf", pdf_info)):
        final = stem.with_suffix(suffix)
        with atomic_open(final, "wb") as f:  # matplotlib takes the format from ``format``, not the temporary name
            fig.savefig(f, format=suffix[1:], dpi=150, bbox_inches="tight", metadata=metadata)
        written.append(final)
    plt.close(fig)
    return written


def image_provenance(runs_and_models: list[tuple[Run, object]], seed: int, **extra) -> dict[str, str]:
    families = ",".join(model.family for _, model in runs_and_models)
    shas = ",".join(str(model.checkpoint_sha256) for _, model in runs_and_models)
    return provenance_chunks(families, shas, seed, **extra)


def plot_provenance(runs: list[Run], what: str) -> dict[str, str]:
    """Plots hold no generated pixels, but every genbench PNG says where it came from."""
    families = ",".join(sorted({r.family for r in runs}))
    return provenance_chunks(families, "n/a (plot of run records)", None, content=what)


# ---------------------------------------------------------------------------------------------- sampling
def first_seed_runs(runs: list[Run]) -> dict[str, Run]:
    """Per family, the completed run with a checkpoint that comes first (by setting, then seed)."""
    chosen: dict[str, Run] = {}
    for run in runs:  # already sorted by family, setting, seed
        if run.status == "completed" and run.checkpoint and run.family not in chosen:
            chosen[run.family] = run
    return chosen


def sampler_kwargs(run_cfg: DictConfig) -> dict:
    """The run's sampler as ``sample``'s keywords, every key kept (the model completes and checks them)."""
    from genbench.sampling import as_sampler_kwargs

    return {"guidance_scale": 1.0} | as_sampler_kwargs(run_cfg.get("sampler"))


def load(run: Run, device: torch.device):
    from genbench.models import load_checkpoint

    return load_checkpoint(run.checkpoint, map_location=device)


@torch.no_grad()
def draw(model, n: int, seed: int, sampler: dict, labels=None) -> torch.Tensor:
    """``n`` uint8 samples, image i from the noise stream of ``(seed, i)``; balanced labels for conditional models
    unless given. ``sampler``: ``sample``'s keywords, of which the model keeps what applies to it."""
    from genbench.noise import IndexedNoise

    if labels is None and model.num_classes:
        labels = torch.arange(n) % model.num_classes
    settings = sampler_settings(model, sampler) or {}
    return to_uint8(model.sample(n, labels=labels, generator=IndexedNoise.range(int(seed), 0, n, model.device), **settings))


def _show(ax, grid: torch.Tensor) -> None:
    image = grid.permute(1, 2, 0).numpy()
    ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def build_datamodule(run_cfg: DictConfig):
    """The run's own data module (same source, size and split), from its resolved config."""
    from hydra.utils import instantiate

    datamodule = instantiate(run_cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


# ---------------------------------------------------------------------------------------------- figures
def sample_grids(runs: list[Run], out: Path, fig_dir: Path, rows: int, seed: int, device: torch.device) -> list[Path]:
    """figures/samples_<family>: a grid per family; OUT/samples.png: the first row of each, one family a row."""
    chosen = first_seed_runs(runs)
    if not chosen:
        raise Skipped("no completed run with a checkpoint")
    strips, written, loaded = [], [], []
    for family, run in chosen.items():
        model, run_cfg = load(run, device)
        cols = model.num_classes or 10
        settings = sampler_settings(model, sampler_kwargs(run_cfg))  # None: the model takes no sampler
        images = draw(model, rows * cols, seed, settings or {})
        extra = {"sampler": settings["sampler"], "sampler_steps": settings["steps"]} if settings else {}
        fig, ax = plt.subplots(figsize=(cols * 0.6, rows * 0.6 + 0.4))
        _show(ax, make_grid(images, nrow=cols))
        ax.set_title(f"{family} ({run.setting}, seed {run.seed})", fontsize=8)
        chunks = provenance_chunks(family, model.checkpoint_sha256, seed, **extra)
        written += save_figure(fig, fig_dir / f"samples_{family}", chunks)
        strips.append((family, make_grid(images[:cols], nrow=cols)))
        loaded.append((run, model))
    fig, axes = plt.subplots(len(strips), 1, figsize=(8, 0.9 * len(strips) + 0.2), squeeze=False)
    for ax, (family, strip) in zip(axes[:, 0], strips):
        _show(ax, strip)
        ax.set_ylabel(family, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    written += save_figure(fig, out / "samples", image_provenance(loaded, seed))
    return written


def steps_figure(
    run: Run,
    fig_dir: Path,
    prefix: str,
    steps_list: list[int],
    seeds: list[int],
    fid_steps: list[int] | None,
    fid_n: int,
    fallback_metrics: DictConfig | None,
    device: torch.device,
    notes: list[str],
) -> list[Path]:
    """For a family that takes a sampler with steps: rows are seeds, columns step counts of the family's
    deterministic ``step_sampler`` (each row is one noise draw), beside FID against steps. Written as
    ``<prefix><sampler>_steps.{png,pdf}`` with the curve's numbers in ``<prefix><sampler>_fid.csv``."""
    model, run_cfg = load(run, device)
    base = dict(model.step_sampler)
    what = base["sampler"].upper()
    stem = f"{prefix}{base['sampler']}"
    guidance = sampler_kwargs(run_cfg)["guidance_scale"]
    takes = lambda k: _takes_steps(model, {**base, "steps": k, "guidance_scale": guidance})  # noqa: E731
    steps = [int(k) for k in steps_list if takes(int(k))]
    if len(steps) < len(steps_list):
        left_out = ", ".join(str(k) for k in steps_list if int(k) not in steps)
        notes.append(f"{what} figure: step counts the model's sampler cannot take ({left_out}) were left out.")
    cells = []
    for seed in seeds:
        log.info("%s grid: seed %s, %s steps", what, seed, ", ".join(map(str, steps)))
        label = None if model.num_classes is None else torch.tensor([int(seed) % model.num_classes])
        for k in steps:
            cells.append(draw(model, 1, seed, {**base, "steps": k, "guidance_scale": guidance}, label))
    grid = make_grid(torch.cat(cells), nrow=len(steps))
    fid_steps = [int(k) for k in fid_steps if takes(int(k))] if fid_steps else steps
    curve = fid_against_steps(model, run_cfg, base, fid_steps, fid_n, fallback_metrics, guidance, notes) if fid_n else None
    if not fid_n:
        notes.append(f"{what} figure: FID curve switched off (report.ddim_fid_n=0).")
    fig = plt.figure(figsize=(0.75 * len(steps) + (4.6 if curve else 0.6), max(0.75 * len(seeds), 2.4) + 0.9),
                     layout="constrained")  # fmt: skip
    widths = [0.75 * len(steps), 3.6] if curve else [1]
    spec = fig.add_gridspec(1, len(widths), width_ratios=widths)
    ax = fig.add_subplot(spec[0, 0])
    _show(ax, grid)
    cell = grid.shape[1] / len(seeds)
    ax.set_xticks([(i + 0.5) * grid.shape[2] / len(steps) for i in range(len(steps))], [str(k) for k in steps], fontsize=7)
    ax.set_yticks([(i + 0.5) * cell for i in range(len(seeds))], [str(s) for s in seeds], fontsize=7)
    ax.set_xlabel(f"{what} steps")
    ax.set_ylabel("seed")
    if curve:
        ax2 = fig.add_subplot(spec[0, 1])
        xs, ys = zip(*curve)
        ax2.plot(xs, ys, "o-", color=family_color(run.family))
        ax2.set_xscale("log")
        ax2.set_xticks(xs, [str(x) for x in xs], fontsize=7)
        ax2.minorticks_off()
        ax2.ticklabel_format(axis="y", useOffset=False)
        ax2.set_xlabel(f"{what} steps")
        ax2.set_ylabel(f"FID ({fid_n} samples)")
        ax2.grid(alpha=0.3)
    fig.suptitle(f"{run.family}, {run.setting}, seed {run.seed}", fontsize=9)
    chunks = provenance_chunks(model.family, model.checkpoint_sha256, ",".join(map(str, seeds)), sampler=base["sampler"],
                               sampler_steps=",".join(map(str, steps)))  # fmt: skip
    written = save_figure(fig, fig_dir / f"{stem}_steps", chunks)
    if curve:
        written.append(write_rows(fig_dir / f"{stem}_fid.csv", [{"steps": k, "fid": f, "n_samples": fid_n} for k, f in curve]))
    return written


def _takes_steps(model, settings: dict) -> bool:
    """Whether the model's sampler takes these settings (a step count above its training timesteps, say, it refuses)."""
    if settings["steps"] <= 0:
        return False
    try:
        sampler_settings(model, settings)
    except GenbenchError:
        return False
    return True


def fid_against_steps(model, run_cfg, base: dict, steps: list[int], n: int, fallback_metrics, guidance: float,
                      notes: list[str]) -> list[tuple[int, float]] | None:  # fmt: skip
    what = base["sampler"].upper()
    try:
        from genbench.metrics import evaluate_model
    except ImportError as exc:
        notes.append(f"{what} figure: no FID curve, the evaluator is not available ({exc}).")
        return None
    metrics = run_cfg.get("metrics") or fallback_metrics
    if metrics is None:
        notes.append(f"{what} figure: no FID curve, neither the run nor the report has a metrics config.")
        return None
    metrics = OmegaConf.merge(metrics, {"n_samples": int(n), "memorization": False})
    datamodule = build_datamodule(run_cfg)
    curve = []
    for k in steps:
        sampler = {**base, "steps": k, "guidance_scale": guidance}
        try:
            record = evaluate_model(model, metrics, datamodule, sampler)
        except GenbenchError as exc:  # no extractor weights here, say: the grid is still worth drawing
            notes.append(f"{what} figure: no FID curve, the evaluator could not run ({exc}).")
            return None
        curve.append((k, float(record["fid"])))
        log.info("%s %d steps: FID %.2f (%d samples, %s)", what, k, record["fid"], n, record.get("extractor"))
    return curve


def interpolation_figure(run: Run, fig_dir: Path, pairs: int, steps: int, seed: int, device: torch.device) -> list[Path]:
    """For a family that interpolates: decoded steps between the codes of test-image pairs, the real pair at both
    ends. Written as ``<family>_interpolation.{png,pdf}``."""
    model, run_cfg = load(run, device)
    datamodule = build_datamodule(run_cfg)
    images, labels = datamodule.images("test"), datamodule.labels("test")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(int(seed)))[: 2 * pairs].tolist()
    strips = []
    for a, b in zip(order[0::2], order[1::2]):
        x_a, x_b = (images[i].float().div(127.5).sub(1.0) for i in (a, b))
        label = None if (model.num_classes is None or labels is None) else int(labels[a])
        path = model.interpolate(x_a, x_b, steps, labels=label).cpu()
        strips.append(to_uint8(torch.cat([x_a[None], path, x_b[None]])))
    grid = make_grid(torch.cat(strips), nrow=steps + 2)
    fig, ax = plt.subplots(figsize=(0.6 * (steps + 2), 0.6 * pairs + 0.5))
    _show(ax, grid)
    ax.set_title(f"{model.family.upper()} latent interpolation ({run.setting}, seed {run.seed}): test image, {steps} "
                 "decoded steps, test image", fontsize=8)  # fmt: skip
    chunks = provenance_chunks(model.family, model.checkpoint_sha256, seed, content="latent interpolation of test images")
    return save_figure(fig, fig_dir / f"{model.family}_interpolation", chunks)


CURVE_KEYS = ("fid", "wall_clock_s", "images_seen")  # every in-training FID row has these
COMPUTE_AXES = (("wall_clock_s", "training wall-clock (s)"), ("images_seen", "images seen"),
                ("train_flops", "training FLOPs"))  # fmt: skip


def read_fid_curve(run: Run) -> list[dict]:
    """The in-training FID rows (``fid``, ``wall_clock_s``, ``images_seen``, and ``train_flops`` where the run
    counted FLOPs) of a run's metrics.csv."""
    path = run.path / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("fid") not in (None, "")]
    out = []
    for r in rows:
        try:
            out.append({k: float(r[k]) for k in (*CURVE_KEYS, "train_flops") if r.get(k) not in (None, "")})
        except ValueError:
            continue
    return [r for r in out if all(k in r for k in CURVE_KEYS)]


def compute_curves_figure(runs: list[Run], fig_dir: Path) -> list[Path]:
    """FID against training wall-clock, against images seen and against training FLOPs, every run of every family on
    one row of axes. Runs made before genbench counted FLOPs have no points on the FLOPs axis."""
    curves = [(run, read_fid_curve(run)) for run in runs]
    curves = [(run, rows) for run, rows in curves if rows]
    if not curves:
        raise Skipped("no run logged in-training FID (set callbacks.fid.every_n_steps or every_n_minutes)")
    fig, axes = plt.subplots(1, len(COMPUTE_AXES), figsize=(13, 3.4), sharey=True)
    labelled = set()
    for run, rows in curves:
        label = run.family if run.family not in labelled else None
        labelled.add(run.family)
        for ax, (x, _) in zip(axes, COMPUTE_AXES):
            points = [(r[x], r["fid"]) for r in rows if x in r]
            if points:
                ax.plot(*zip(*points), "o-", ms=3, alpha=0.8, label=label, color=family_color(run.family))
    fids = [r["fid"] for _, rows in curves for r in rows]
    if min(fids) > 0 and max(fids) / min(fids) > 10:
        axes[0].set_yscale("log")
    else:
        axes[0].ticklabel_format(axis="y", useOffset=False)
    for ax, (x, title) in zip(axes, COMPUTE_AXES):
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
        values = [r[x] for _, rows in curves for r in rows if r.get(x, 0) > 0]
        if x == "train_flops" and values and max(values) / min(values) > 100:
            ax.set_xscale("log")  # families' FLOPs per image differ by orders of magnitude (a VAE's to a U-Net's)
        elif x != "wall_clock_s":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 150k, 6M, 20T: full counts overlap
    if not any("train_flops" in r for _, rows in curves for r in rows):
        axes[-1].text(0.5, 0.5, "n/a: these runs were made\nbefore genbench counted FLOPs", ha="center", va="center",
                      transform=axes[-1].transAxes, fontsize=8, color="0.4")  # fmt: skip
    axes[0].set_ylabel("FID (in-training)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    written = save_figure(fig, fig_dir / "fid_vs_compute", plot_provenance([r for r, _ in curves], "FID against compute"))
    long_rows = [{"family": run.family, "seed": run.seed, "setting": run.setting, **row,
                  "train_flops": row.get("train_flops")} for run, rows in curves for row in rows]  # fmt: skip
    written.append(write_rows(fig_dir / "fid_vs_compute.csv", long_rows))
    return written


def throughput_figure(runs: list[Run], fig_dir: Path) -> list[Path]:
    """Training img/s (run.json) per family, one bar per hardware, mean ± std over runs."""
    import statistics

    cells: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        value = run.record.get("img_per_s")
        if run.status == "completed" and isinstance(value, (int, float)):
            cells.setdefault((run.family, run.hardware), []).append(float(value))
    if not cells:
        raise Skipped("no completed run records img_per_s")
    families = sorted({f for f, _ in cells})
    hardware = sorted({h for _, h in cells})
    width = 0.8 / len(hardware)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(families), 3.2))
    for j, hw in enumerate(hardware):
        xs, means, stds = [], [], []
        for i, family in enumerate(families):
            values = cells.get((family, hw))
            if values:
                xs.append(i + (j - (len(hardware) - 1) / 2) * width)
                means.append(statistics.fmean(values))
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        bars = ax.bar(xs, means, width, yerr=stds, capsize=3, label=hw)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(families)), families)
    ax.set_ylabel("training img/s")
    ax.legend(title="hardware", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, fig_dir / "throughput", plot_provenance(runs, "throughput by hardware"))


def write_rows(path: Path, rows: list[dict]) -> Path:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path
