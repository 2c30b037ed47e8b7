"""Paper-style tables: mean ± std over seeds per family and setting, one table per evaluation protocol.

Metrics are only comparable under one protocol (genbench.metrics.protocol). A table holds the scores of one
*scoring* protocol (extractor and weights, reference, counts, metric settings, seed): every family's, so a one-pass model
sits beside one sampled with DDIM. A row holds the seeds of one family and setting under one *full*
protocol (the scoring one plus the sampler), so no row and no average ever mixes protocols; a run scored under
several protocols appears once in each. Captions name the protocol ids. Runs without scores get a table of their
own, with – for every metric. Runs that did not complete are never averaged in; they are listed below the tables.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field

from genbench.report.collect import Run

DASH = "–"


@dataclass(frozen=True)
class Quantity:
    key: str  # column stem in table.csv
    header: str
    field: str
    source: str = "record"  # run.json ("record") or metrics.json ("metrics")
    better: str | None = None  # "lower" | "higher": the best row is set in bold
    scale: float = 1.0


QUANTITIES = (
    Quantity("params", "parameters", "params"),
    Quantity("images_seen", "images seen", "images_seen"),
    Quantity("train_flops", "train FLOPs", "train_flops"),  # absent from runs made before FLOPs were counted: –
    Quantity("train_seconds", "train time", "train_seconds"),
    Quantity("img_per_s", "img/s", "img_per_s"),
    Quantity("fid", "FID", "fid", "metrics", "lower"),
    Quantity("fid_inf", "FID∞", "fid_inf", "metrics", "lower"),  # records from before FID∞ show –
    Quantity("kid", "KID", "kid_mean", "metrics", "lower"),
    Quantity("is", "IS", "is_mean", "metrics", "higher"),
    Quantity("precision", "precision", "precision", "metrics", "higher"),
    Quantity("recall", "recall", "recall", "metrics", "higher"),
    Quantity("density", "density", "density", "metrics", "higher"),  # records from before density/coverage: –
    Quantity("coverage", "coverage", "coverage", "metrics", "higher"),
    Quantity("memorization", "memorization", "memorization", "metrics", "lower"),
    Quantity("sample_seconds_per_1k", "sampling s/1k img", "sample_seconds_per_1k", "metrics"),
)
METRIC_KEYS = ("fid", "fid_inf", "kid_mean", "kid_std", "is_mean", "is_std", "is_inf", "precision", "recall", "density",
               "coverage", "memorization", "sample_seconds_per_1k", "sample_flops_per_image")  # fmt: skip


@dataclass
class Stat:
    mean: float | None
    std: float | None
    n: int


@dataclass
class Group:
    family: str
    setting: str
    runs: list[Run]
    protocol: str | None = None  # the full protocol id every run of the row was scored under
    label: str = ""  # the setting as shown: with the sampler when rows of one family and setting differ by it

    def sampler(self) -> str | None:
        """The sampler of this row's protocol, readably (``ddim, 20 steps, eta 0``), or None."""
        metrics = self.runs[0].metrics or {}
        settings = metrics.get("sampler_settings") or (metrics.get("protocol_fields") or {}).get("sampler")
        if not settings and metrics.get("sampler"):
            settings = {"sampler": metrics["sampler"], "steps": metrics.get("sampler_steps")}
        if not settings:
            return None
        extra = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(settings.items())
                 if k not in ("sampler", "steps") and v is not None]  # fmt: skip
        return ", ".join([f"{settings.get('sampler')}", f"{settings.get('steps')} steps", *extra])

    def values(self, q: Quantity) -> list[float]:
        out = []
        for run in self.runs:
            source = run.record if q.source == "record" else (run.metrics or {})
            value = source.get(q.field)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out.append(float(value) * q.scale)
        return out

    def stat(self, q: Quantity) -> Stat:
        values = self.values(q)
        if not values:
            return Stat(None, None, 0)
        std = statistics.stdev(values) if len(values) > 1 else None
        return Stat(statistics.fmean(values), std, len(values))


@dataclass
class Table:
    protocol: str | None  # the scoring protocol id its scores share; None: runs without scores
    groups: list[Group]
    caption: str = ""
    show_setting: bool = False

    @property
    def runs(self) -> list[Run]:
        return [r for g in self.groups for r in g.runs]


@dataclass
class Agreement:
    """How two tables of the same runs under two extractors rank the rows: Kendall's τ per metric."""

    tables: tuple[int, int]  # 1-based table numbers
    extractors: tuple[str, str]
    rows: int  # rows present in both tables
    tau: dict[str, float | None]  # metric header -> τ of the rows' means (None: fewer than 2 rows or all tied)

    @property
    def disagree(self) -> list[str]:
        """The metrics whose rankings differ (τ < 1: at least one pair of rows swaps)."""
        return [name for name, tau in self.tau.items() if tau is not None and tau < 1 - 1e-9]

    def text(self, table: int) -> str:
        """The sentence for table ``table``'s caption (one of :attr:`tables`), naming the other table."""
        other = 1 - self.tables.index(table)
        taus = ", ".join(f"{name} {'n/a' if tau is None else f'{tau:.2f}'}" for name, tau in self.tau.items())
        head = (f"Ranking against Table {self.tables[other]} ({self.extractors[other]} features), "
                f"Kendall τ over {self.rows} rows: {taus}.")  # fmt: skip
        if self.disagree:
            return (f"{head} **The rankings disagree** on {', '.join(self.disagree)}: there the order of these rows "
                    "depends on the feature space.")  # fmt: skip
        if all(tau is None for tau in self.tau.values()):
            return f"{head} Too few rows to compare rankings."
        return f"{head} The rankings agree on every metric both tables have."


@dataclass
class Summary:
    tables: list[Table]
    excluded: list[Run]  # failed, diverged, still running
    missing: list[str]  # sweep jobs with no run.json at all
    notes: list[str] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)


def entries(run: Run) -> list[Run]:
    """The run once per protocol it was scored under (once, without metrics, when it has no score)."""
    scores = run.scores or ([run.metrics] if run.metrics else [])
    return [run.with_score(score) for score in scores] or [run.with_score(None)]


def build_summary(runs: list[Run], missing: list[str]) -> Summary:
    completed = [r for r in runs if r.status == "completed"]
    excluded = [r for r in runs if r.status != "completed"]
    by_protocol: dict[str | None, list[Run]] = {}
    for entry in (e for run in completed for e in entries(run)):
        by_protocol.setdefault(entry.scoring_protocol, []).append(entry)
    # The protocol with the most runs first; the table without metrics last.
    order = sorted(by_protocol, key=lambda p: (p is None, -len(by_protocol[p]), str(p)))
    tables = []
    for protocol in order:
        groups: dict[tuple[str, str, str | None], list[Run]] = {}
        for entry in by_protocol[protocol]:
            groups.setdefault((entry.family, entry.setting, entry.protocol), []).append(entry)
        table = Table(protocol, [Group(f, s, rs, p) for (f, s, p), rs in groups.items()])
        label_rows(table)
        table.caption = caption(table)
        tables.append(table)
    summary = Summary(tables, excluded, missing)
    summary.agreements = rank_agreements(tables)
    for agreement in summary.agreements:
        for number in agreement.tables:
            tables[number - 1].caption += " " + agreement.text(number)
    if len([p for p in by_protocol if p is not None]) > 1:
        summary.notes.append("Scores were made under different evaluation protocols (extractor, reference, sample "
                             "counts or metric settings); each protocol has its own table and none are averaged "
                             "together.")  # fmt: skip
    no_metrics = len(by_protocol.get(None, []))
    if no_metrics:
        summary.notes.append(f"{no_metrics} completed run(s) have no score (evaluate=false, or the evaluation "
                             "failed): their metrics show –.")  # fmt: skip
    return summary


# Protocol fields that differ between extractors: without them, two tables' scoring protocols evaluate the same way.
EXTRACTOR_FIELDS = ("extractor", "extractor_sha256", "isc_splits", "sampler")


def _same_but_extractor(a: Table, b: Table) -> bool:
    fields = [(t.runs[0].metrics or {}).get("protocol_fields") for t in (a, b)]
    if not all(isinstance(f, dict) for f in fields):
        return False
    a_rest, b_rest = ({k: v for k, v in f.items() if k not in EXTRACTOR_FIELDS} for f in fields)
    return a_rest == b_rest and fields[0].get("extractor") != fields[1].get("extractor")


def _row_key(group: Group) -> tuple:
    return group.family, group.setting, group.sampler()


def rank_agreements(tables: list[Table]) -> list[Agreement]:
    """Kendall's τ (scipy) between every two tables that score the same kind of evaluation with different extractors
    (``metrics.extractors``), per metric both have, over the rows (family, setting, sampler) found in both. τ = 1:
    the same order; any pair of rows that swaps lowers it."""
    from scipy.stats import kendalltau

    found = []
    scored = [(i, t) for i, t in enumerate(tables, 1) if t.protocol is not None]
    for n, (i, a) in enumerate(scored):
        for j, b in scored[n + 1 :]:
            if not _same_but_extractor(a, b):
                continue
            rows_a, rows_b = {_row_key(g): g for g in a.groups}, {_row_key(g): g for g in b.groups}
            shared = [key for key in rows_a if key in rows_b]
            tau = {}
            for q in (q for q in QUANTITIES if q.better and q.source == "metrics"):
                pairs = [(rows_a[k].stat(q).mean, rows_b[k].stat(q).mean) for k in shared]
                pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
                if not any(rows_a[k].values(q) for k in shared) or not any(rows_b[k].values(q) for k in shared):
                    continue  # a metric one table lacks (IS: an extractor without a class posterior has none)
                value = kendalltau(*zip(*pairs)).statistic if len(pairs) >= 2 else float("nan")
                tau[q.header] = None if not math.isfinite(value) else float(value)
            extractors = tuple(str((t.runs[0].metrics or {}).get("extractor")) for t in (a, b))
            found.append(Agreement((i, j), extractors, len(shared), tau))
    return found


def label_rows(table: Table) -> None:
    """Show the setting column when rows differ by it, and a row's sampler where one family's rows differ by it."""
    protocols: dict[tuple[str, str], set] = {}
    for group in table.groups:
        protocols.setdefault((group.family, group.setting), set()).add(group.protocol)
    for group in table.groups:
        sampler = group.sampler() if len(protocols[(group.family, group.setting)]) > 1 else None
        group.label = ", ".join(p for p in (group.setting, sampler and f"sampler {sampler}") if p)
    table.show_setting = len({g.label for g in table.groups}) > 1


def _unique(values) -> list[str]:
    return sorted({str(v) for v in values if v not in (None, "")})


def caption(table: Table) -> str:
    runs = table.runs
    datasets = _unique((r.config or {}).get("data", {}).get("source") for r in runs)
    parts = [f"{' / '.join(datasets) or 'Generative models'}: mean ± std over seeds (n runs per row)."]
    if table.protocol is None:
        parts.append("No scores: metric columns show –.")
    else:
        m = runs[0].metrics
        parts.append(f"Protocol {table.protocol}: {m.get('extractor')} features (weights sha256 "
                     f"{str(m.get('extractor_sha256'))[:12]}), n_fake={m.get('n_fake')} generated against "
                     f"n_real={m.get('n_real')} real images ({m.get('reference')}).")  # fmt: skip
        samplers = _unique(f"{g.family} {g.sampler()} (protocol {g.protocol})" for g in table.groups if g.sampler())
        if samplers:
            parts.append(f"Sampled with: {'; '.join(samplers)}.")
    hardware = _unique(f"{(r.record.get('hardware') or {}).get('device_name', '?')} "
                       f"({(r.record.get('hardware') or {}).get('precision', '?')})" for r in runs)  # fmt: skip
    parts.append(f"Hardware: {'; '.join(hardware) or 'unknown'}.")
    budgets = _unique(budget_text(r.record.get("budget")) for r in runs)
    if budgets:
        parts.append(f"Budget per run: {'; '.join(budgets)}. Each run's config and record are in the results folder's "
                     "runs/: python -m genbench.reproduce FOLDER retrains and rescores them.")  # fmt: skip
    commits = _unique(r.record.get("git_commit") for r in runs)
    short = [c[:12] + ("-dirty" if c.endswith("-dirty") else "") for c in commits]
    parts.append(f"Commit{'s' if len(short) > 1 else ''}: {', '.join(short) or 'unknown'}.")
    if table.protocol is not None:
        parts.append("Best in bold (lower FID, FID∞, KID and memorization; higher IS, precision, recall, density and "
                     "coverage).")
    return " ".join(parts)


def budget_text(budget: dict | None) -> str | None:
    """run.json's budget in words, saying whether it means the same work on another machine."""
    from genbench.schema.types import parse_flops
    from genbench.training.flops import si_flops

    chosen = {k: v for k, v in (budget or {}).items() if v is not None}
    if len(chosen) != 1:
        return None
    key, value = next(iter(chosen.items()))
    return {"max_flops": lambda: f"{si_flops(float(parse_flops(value)))} training FLOPs (counted: the same work on any machine)",
            "max_images": lambda: f"{value:,} training images (the same work on any machine)",
            "max_steps": lambda: f"{value:,} steps (the same work on any machine)",
            "max_minutes": lambda: f"{value:g} minutes of training (wall-clock: a faster or less busy machine trains "
                                   "further; reproduce retrains to the steps each run reached)"}[key]()  # fmt: skip


# ---------------------------------------------------------------------------------------------- formatting
def _decimals(value: float) -> int:
    """Three significant digits, at most four decimals, none for values of 100 and above."""
    if value == 0 or not math.isfinite(value):
        return 2
    return int(min(4, max(0, 2 - math.floor(math.log10(abs(value))))))


def _si(value: float) -> str:
    for limit, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def time_unit(table: Table) -> tuple[str, float]:
    q = next(q for q in QUANTITIES if q.key == "train_seconds")
    means = [g.stat(q).mean for g in table.groups if g.stat(q).mean is not None]
    return ("min", 60.0) if means and max(means) >= 120 else ("s", 1.0)


def headers(table: Table) -> list[str]:
    unit, _ = time_unit(table)
    cols = ["family"] + (["setting"] if table.show_setting else []) + ["n"]
    return cols + [f"{q.header} ({unit})" if q.key == "train_seconds" else q.header for q in QUANTITIES]


def cells(table: Table, style: str) -> list[list[str]]:
    """Display rows, ``style`` markdown or latex: mean ± std, (n=k) where a value is missing for some seeds."""
    unit, divisor = time_unit(table)
    pm, dash = (" $\\pm$ ", "--") if style == "latex" else (" ± ", DASH)
    bold = (lambda s: f"\\textbf{{{s}}}") if style == "latex" else (lambda s: f"**{s}**")
    best = {q.key: best_mean_text(table, q) for q in QUANTITIES if q.better}
    rows = []
    for group in table.groups:
        row = [group.family] + ([group.label] if table.show_setting else []) + [str(len(group.runs))]
        for q in QUANTITIES:
            stat = group.stat(q)
            if stat.mean is None:
                row.append(dash)
                continue
            if q.key in ("params", "images_seen", "train_flops"):
                text = _si(stat.mean) + (f"{pm}{_si(stat.std)}" if stat.std else "")
            else:
                scale = divisor if q.key == "train_seconds" else 1.0
                mean = stat.mean / scale
                digits = _decimals(mean)
                text = f"{mean:.{digits}f}" + (f"{pm}{stat.std / scale:.{digits}f}" if stat.std is not None else "")
                if best.get(q.key) is not None and f"{mean:.{digits}f}" == best[q.key]:
                    text = bold(text)
            if 0 < stat.n < len(group.runs):
                text += f" (n={stat.n})"
            row.append(text)
        rows.append(row)
    return rows


def best_mean_text(table: Table, q: Quantity) -> str | None:
    """The best group mean as displayed; None when fewer than two rows have the value or all show the same."""
    means = [m for m in (g.stat(q).mean for g in table.groups) if m is not None]
    if len({f"{m:.{_decimals(m)}f}" for m in means}) < 2:
        return None
    best = min(means) if q.better == "lower" else max(means)
    return f"{best:.{_decimals(best)}f}"


def excluded_lines(summary: Summary) -> list[str]:
    lines = []
    for run in summary.excluded:
        status = {"running": "incomplete (status running: killed, or still training)"}.get(run.status, run.status)
        reason = run.record.get("stop_reason")
        lines.append(f"{run.label}: {status}{f' – {reason}' if reason else ''} [{run.path}]")
    lines += [f"missing: {job}: no run.json (failed before training started, or not run yet)" for job in summary.missing]
    return lines


def to_markdown(summary: Summary) -> str:
    out = []
    for i, table in enumerate(summary.tables, 1):
        head = headers(table)
        out.append(f"**Table {i}.** {table.caption}\n")
        out.append("| " + " | ".join(head) + " |")
        text_cols = 1 + table.show_setting  # family (and setting) left-aligned, numbers right-aligned
        out.append("|" + "|".join(["---"] * text_cols + ["---:"] * (len(head) - text_cols)) + "|")
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells(table, "markdown")]
        out.append("")
    lines = excluded_lines(summary)
    if lines:
        out.append(f"**Not in the tables ({len(lines)}):**\n")
        out += [f"- {line}" for line in lines]
        out.append("")
    out += [f"_Note: {note}_\n" for note in summary.notes]
    return "\n".join(out).rstrip() + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "±": r"$\pm$", "∞": r"$\infty$", "–": "--", "³": r"$^3$", "×": r"$\times$",
                  "∅": r"$\emptyset$"}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(summary: Summary) -> str:
    out = ["% genbench report: needs \\usepackage{booktabs} (and graphicx if you \\resizebox it)."]
    lines = excluded_lines(summary)
    for i, table in enumerate(summary.tables, 1):
        head = headers(table)
        align = "l" + ("l" if table.show_setting else "") + "r" * (len(head) - 1 - table.show_setting)
        out += ["\\begin{table}[t]", "\\centering", "\\small",
                f"\\caption{{{latex_escape(table.caption)}}}", f"\\label{{tab:genbench-{i}}}",
                f"\\begin{{tabular}}{{{align}}}", "\\toprule",
                " & ".join(latex_escape(h) for h in head) + " \\\\", "\\midrule"]  # fmt: skip
        for row in cells(table, "latex"):
            # Cells already carry LaTeX ($\pm$, \textbf); only the text columns need escaping.
            text_cols = 2 + table.show_setting
            out.append(" & ".join([latex_escape(c) for c in row[:text_cols]] + row[text_cols:]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        if i == len(summary.tables) and (lines or summary.notes):
            out.append("\\par\\smallskip\\footnotesize")
            if lines:
                out.append("Not in the table: " + "; ".join(latex_escape(line) for line in lines) + ".")
            out += [latex_escape(note) for note in summary.notes]
        out += ["\\end{table}", ""]
    return "\n".join(out)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


PROTOCOL_COLUMNS = ("extractor", "extractor_sha256", "n_fake", "n_real", "reference", "sampler", "sampler_steps")


def protocol_columns(run: Run) -> dict:
    """The protocol ids of a run's score (or entry) and the facts that explain them."""
    m = run.metrics or {}
    return {"scoring_protocol": run.scoring_protocol, "protocol": run.protocol, **{k: m.get(k) for k in PROTOCOL_COLUMNS}}


def table_rows(summary: Summary) -> list[dict]:
    """One row per table group: protocol, family, setting, n, and ``<q>_mean``, ``<q>_std``, ``<q>_n`` (raw units)."""
    rows = []
    for i, table in enumerate(summary.tables, 1):
        for group in table.groups:
            row = {"table": i, **protocol_columns(group.runs[0]), "family": group.family, "setting": group.label,
                   "n": len(group.runs), "seeds": " ".join(str(r.seed) for r in group.runs)}  # fmt: skip
            for q in QUANTITIES:
                stat = group.stat(q)
                row |= {f"{q.key}_mean": _raw(stat.mean, q), f"{q.key}_std": _raw(stat.std, q), f"{q.key}_n": stat.n}
            rows.append(row)
    return rows


def _raw(value: float | None, q: Quantity) -> float | None:
    return None if value is None else float(f"{value / q.scale:.6g}")


def run_rows(runs: list[Run]) -> list[dict]:
    """One row per run, whatever its status: the run record, its setting, and its own protocol's metrics (metrics.json).

    Hardware columns are ``hardware_*`` so that none shares a name with a metric (``precision``).
    """
    rows = []
    for run in runs:
        hw = run.record.get("hardware") or {}
        row = {"family": run.family, "seed": run.seed, "status": run.status, "stop_reason": run.record.get("stop_reason"),
               "setting": run.setting, "hardware_name": run.hardware, "hardware_device": hw.get("device_name"),
               "hardware_precision": hw.get("precision"), "git_commit": run.record.get("git_commit")}  # fmt: skip
        for key in ("params", "images_seen", "steps", "train_flops", "train_flops_per_image", "train_seconds",
                    "img_per_s", "peak_mem_mb"):
            row[key] = run.record.get(key)
        row |= protocol_columns(run)
        for key in METRIC_KEYS:
            row[key] = (run.metrics or {}).get(key)
        row["all_protocols"] = " ".join(sorted(e.protocol for e in entries(run) if e.protocol))
        row["path"] = str(run.path)
        rows.append(row)
    return rows


def to_csv(rows: list[dict]) -> str:
    return _csv(rows)
