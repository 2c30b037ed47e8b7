"""``python -m genbench.report`` over real sweeps: mean ± std per family, failures listed, protocols kept apart.

Two sweeps run side by side as a user runs them (``python -m genbench.train -m …``): gan and vae with two seeds
each, and a sweep in which the gan job fails (a Trainer option its manual optimization refuses). The table logic
itself is also checked on hand-made runs, which is instant.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import CONF_DIR, REPO, assert_contract_error, cpu_precision, finish_cli, requires_fmnist, run_cli, start_cli, train_run

from genbench.errors import GenbenchError
from genbench.imageio import read_png_text
from genbench.report import report
from genbench.report.collect import Run, assign_settings, find_runs, missing_jobs
from genbench.report.tables import build_summary, run_rows, table_rows, to_latex, to_markdown

SMOKE = ["experiment=smoke"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _report_cfg(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        # paths.output_dir is Hydra's run folder, unset outside a Hydra run: in-process, the report's own out=
        return compose("report", overrides=["paths.output_dir=${out}", *overrides])


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, fmnist) -> dict:
    """Both sweeps side by side, then the report on the good one next to a report on a folder that is not there."""
    root = tmp_path_factory.mktemp("runs")
    out = tmp_path_factory.mktemp("reports")
    good = start_cli("train", "-m", *SMOKE, "name=smoke", "evaluate=true", "model=gan,vae", "seed=0,1", f"paths.runs_dir={root}")
    bad = start_cli("train", "-m", *SMOKE, "name=broken", "evaluate=false", "model=vae,gan", "seed=0",
                    "trainer.gradient_clip_val=1.0", f"paths.runs_dir={root}")  # fmt: skip
    results = {"good_sweep": finish_cli(good, timeout=400), "bad_sweep": finish_cli(bad, timeout=400)}
    reports = {
        "good_report": start_cli("report", f"sweep={root / 'smoke'}", f"out={out / 'smoke'}", "report.grid_rows=2",
                                 "report.interp_pairs=2", "report.interp_steps=4"),
        "missing_dir": start_cli("report", f"sweep={root / 'nowhere'}", f"out={out / 'nowhere'}"),
    }  # fmt: skip
    results |= {name: finish_cli(process, timeout=400) for name, process in reports.items()}
    return {"root": root, "out": out, **results}


@requires_fmnist
def test_two_family_two_seed_sweep_reports_mean_std_with_n2(sweeps):
    assert sweeps["good_sweep"].returncode == 0, sweeps["good_sweep"].stderr[-3000:]
    result = sweeps["good_report"]
    assert result.returncode == 0, result.stderr[-3000:]
    out = sweeps["out"] / "smoke"
    tables = {}  # experiment=smoke scores with metrics.extractors=[fmnist_classifier, fmnist_ssl]: a table each
    for row in _rows(out / "table.csv"):
        tables.setdefault(row["extractor"], {})[row["family"]] = row
    assert list(tables) == ["fmnist_classifier", "fmnist_ssl"]
    groups = tables["fmnist_classifier"]
    assert set(groups) == {"gan", "vae"} == set(tables["fmnist_ssl"])
    assert all(row["table"] == "2" and row["is_mean"] == "" and row["fid_mean"] for row in tables["fmnist_ssl"].values())
    for row in groups.values():
        assert row["n"] == "2" and row["seeds"] == "0 1"
        assert row["images_seen_n"] == "2" and row["fid_n"] == "2" and row["img_per_s_std"] != ""
        assert row["extractor"] == "fmnist_classifier" and row["n_fake"] == "200"
        assert float(row["fid_mean"]) > 0 and row["fid_std"] != ""
    runs = _rows(out / "runs.csv")
    assert len(runs) == 4 and {r["status"] for r in runs} == {"completed"}
    header = (out / "runs.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header))  # no column shadows another (hardware precision vs the metric)
    assert all(0 <= float(r["precision"]) <= 1 and r["hardware_precision"] == cpu_precision() for r in runs)

    # evaluate=true wrote each score under its protocol, and metrics.json as the run's own.
    for folder in {Path(r["path"]) for r in runs}:
        own = json.loads((folder / "metrics.json").read_text())
        assert json.loads((folder / "metrics" / f"{own['protocol']}.json").read_text()) == own
    protocols = {row["protocol"] for row in groups.values()}
    assert len(protocols) == 1 and protocols == {row["scoring_protocol"] for row in groups.values()}

    markdown = (out / "table.md").read_text()
    assert "| family |" in markdown and "±" in markdown and "**" in markdown
    assert "| gan | 2 |" in markdown and "| vae | 2 |" in markdown
    assert "n_fake=200" in markdown and "fmnist_classifier" in markdown and "x86_64 CPU" in markdown
    assert f"Protocol {protocols.pop()}" in markdown  # the caption names the protocol id
    assert "| family |" in result.stdout  # the report prints its Markdown table
    latex = (out / "table.tex").read_text()
    assert all(rule in latex for rule in ("\\toprule", "\\midrule", "\\bottomrule", "$\\pm$", "\\textbf{"))

    for png in [out / "samples.png", *sorted((out / "figures").glob("*.png"))]:
        assert read_png_text(png).get("AI-generated") == "true", png
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"samples_gan.png", "samples_vae.pdf", "vae_interpolation.png", "throughput.pdf"} <= figures
    assert not [p for p in out.rglob(".*tmp*")], "temporary files left behind"
    stamp = json.loads((out / "report.json").read_text())
    assert stamp["run_git_commits"] and stamp["hardware"] and len(stamp["groups"]) == 4
    [agreement] = stamp["rank_agreement"]  # two rows: τ is 1 or -1, and the captions say which
    assert agreement["tables"] == [1, 2] and agreement["rows"] == 2 and abs(agreement["kendall_tau"]["FID"]) == 1
    assert ("The rankings disagree" in markdown) == bool(agreement["disagree"]) and "Kendall τ over 2 rows" in markdown
    # no folder of the machine that made it (issue 21): the sweep by its name, as it lies outside the working dir
    assert stamp["sweep"] == "smoke" and str(sweeps["root"]) not in (out / "report.json").read_text()


@requires_fmnist
def test_sweep_with_a_failed_job_still_reports_the_others_and_lists_the_failure(sweeps):
    sweep = sweeps["bad_sweep"]
    assert sweep.returncode != 0  # Hydra runs every job, then raises the failure
    records = [json.loads(p.read_text()) for p in (sweeps["root"] / "broken").rglob("run.json")]
    records = {record["family"]: record for record in records}
    assert records["vae"]["status"] == "completed" and records["gan"]["status"] == "failed"

    out = sweeps["out"] / "broken"
    report(_report_cfg(f"sweep={sweeps['root'] / 'broken'}", f"out={out}", "report.figures=false"))
    rows = _rows(out / "table.csv")
    assert [(r["family"], r["n"]) for r in rows] == [("vae", "1")]
    markdown = (out / "table.md").read_text()
    assert "Not in the tables (1)" in markdown and "gan seed 0" in markdown and "failed" in markdown
    assert "clipping" in markdown  # the stop reason says why
    assert "gan seed 0" in (out / "table.tex").read_text()
    assert {r["status"] for r in _rows(out / "runs.csv")} == {"completed", "failed"}
    assert "–" in markdown  # no metrics.json (evaluate=false): metrics show a dash


@requires_fmnist
def test_bad_sweep_folder_is_a_contract_error_and_writes_nothing(sweeps, tmp_path):
    assert_contract_error(sweeps["missing_dir"], "nowhere")
    assert not (sweeps["out"] / "nowhere").exists()
    with pytest.raises(GenbenchError, match="no run.json"):
        find_runs(tmp_path)


@requires_fmnist
def test_missing_and_diverged_jobs_are_listed_never_dropped(sweeps, tmp_path):
    sweep = tmp_path / "smoke"
    shutil.copytree(sweeps["root"] / "smoke", sweep)
    shutil.rmtree(sweep / "model-vae+seed-1")  # as train.py leaves a job that failed before training
    record_path = sweep / "model-gan+seed-1" / "run.json"
    record = json.loads(record_path.read_text()) | {"status": "diverged", "stop_reason": "loss became non-finite"}
    record_path.write_text(json.dumps(record))

    runs = find_runs(sweep)
    missing = missing_jobs(sweep, runs)
    assert missing == [f"model=vae, seed=1 (sweep {sweep})"]
    summary = build_summary(runs, missing)
    for table in summary.tables:  # one per extractor (experiment=smoke scores with two)
        assert [(g.family, len(g.runs)) for g in table.groups] == [("gan", 1), ("vae", 1)]
    markdown = to_markdown(summary)
    assert "gan seed 1 (cpu): diverged – loss became non-finite" in markdown
    assert "missing: model=vae, seed=1" in markdown
    assert "Not in the table" in to_latex(summary)


# ------------------------------------------------------------------------------ table logic on hand-made runs
def _run(tmp_path: Path, family: str, seed: int, hardware: str = "cpu", metrics: dict | None = None, **config) -> Run:
    record = {"family": family, "seed": seed, "status": "completed", "params": 1000, "images_seen": 640,
              "train_seconds": 10.0 + seed, "img_per_s": 64.0 + seed, "git_commit": "abc", "hardware":
              {"device_name": "cpu", "precision": "32-true"}}  # fmt: skip
    cfg = {"seed": seed, "model": {"family": family}, "hardware": {"name": hardware}, "data": {"seed": seed},
           "run_name": f"{family}-seed{seed}", **config}  # fmt: skip
    return Run(tmp_path / f"{family}{seed}{hardware}", record, cfg, metrics)


def _metrics(fid: float, n_fake: int = 1000, extractor: str = "fmnist_classifier") -> dict:
    protocol = {"extractor": extractor, "extractor_sha256": "f" * 64, "n_fake": n_fake, "n_real": 10000, "reference": "test"}
    return protocol | {"fid": fid, "kid_mean": 0.01, "is_mean": 3.0 + fid / 100, "precision": 0.5, "recall": 0.4,
                       "memorization": 0.01}  # fmt: skip


def test_different_protocols_are_never_averaged_together(tmp_path):
    """Records from before protocol ids (no ``protocol`` field) are still kept apart by what they hold."""
    runs = [_run(tmp_path, "gan", 0, metrics=_metrics(20.0)), _run(tmp_path, "gan", 1, metrics=_metrics(30.0)),
            _run(tmp_path, "gan", 2, metrics=_metrics(25.0, n_fake=500)),
            _run(tmp_path, "vae", 0, metrics=_metrics(40.0, extractor="inception")), _run(tmp_path, "vae", 1)]  # fmt: skip
    assign_settings(runs)
    summary = build_summary(runs, [])
    protocols = [(t.protocol and (t.runs[0].metrics["extractor"], t.runs[0].metrics["n_fake"]),
                  [(g.family, len(g.runs)) for g in t.groups]) for t in summary.tables]  # fmt: skip
    assert protocols == [(("fmnist_classifier", 1000), [("gan", 2)]), (("fmnist_classifier", 500), [("gan", 1)]),
                         (("inception", 1000), [("vae", 1)]), (None, [("vae", 1)])]  # fmt: skip
    rows = table_rows(summary)
    assert rows[0]["fid_mean"] == 25.0 and rows[0]["fid_n"] == 2 and abs(rows[0]["fid_std"] - 7.07107) < 1e-4
    assert any("different evaluation protocols" in note for note in summary.notes)
    assert "n_fake=500" in to_markdown(summary)


def test_runs_made_before_flops_were_counted_show_a_dash_and_no_flops_point(tmp_path):
    from genbench.report.figures import compute_curves_figure

    new, old = _run(tmp_path, "gan", 0, metrics=_metrics(20.0)), _run(tmp_path, "vae", 0, metrics=_metrics(30.0))
    new.record |= {"train_flops": 2.1e12, "train_flops_per_image": 3.28e9}  # old: run.json without FLOP fields
    assign_settings([new, old])
    summary = build_summary([new, old], [])
    head = to_markdown(summary).splitlines()[2].split(" | ")
    rows = {line.split(" | ")[0]: line.split(" | ") for line in to_markdown(summary).splitlines() if line.startswith("| ")}
    column = head.index("train FLOPs")
    assert rows["| gan"][column] == "2.1T" and rows["| vae"][column] == "–"
    assert [row["train_flops_mean"] for row in table_rows(summary)] == [2.1e12, None] and to_latex(summary)
    for run, flops in ((new, ",1000000000000.0"), (old, "")):
        run.path.mkdir()
        header = "fid,wall_clock_s,images_seen" + (",train_flops" if flops else "")
        (run.path / "metrics.csv").write_text(f"{header}\n40.0,5.0,320{flops}\n30.0,10.0,640{flops.replace('1', '2', 1)}\n")
    compute_curves_figure([new, old], tmp_path / "both")
    points = {(r["family"], r["images_seen"]): r["train_flops"] for r in _rows(tmp_path / "both" / "fid_vs_compute.csv")}
    assert points == {("gan", "320.0"): "1000000000000.0", ("gan", "640.0"): "2000000000000.0", ("vae", "320.0"): "",
                      ("vae", "640.0"): ""}  # fmt: skip
    assert (tmp_path / "old" / "fid_vs_compute.png") in compute_curves_figure([old], tmp_path / "old")  # n/a, no crash


def test_best_value_is_bold_and_settings_split_rows(tmp_path):
    runs = [_run(tmp_path, "gan", s, metrics=_metrics(20.0 + s)) for s in (0, 1)]
    runs += [_run(tmp_path, "vae", s, hw, metrics=_metrics(50.0 + s)) for s in (0, 1) for hw in ("cpu", "gpu_bf16")]
    for seed, beta in ((0, 1), (1, 2)):  # a swept model key
        runs.append(_run(tmp_path, "diffusion", seed, metrics=_metrics(10.0), model={"family": "diffusion", "beta": beta}))
    assign_settings(runs)
    settings = {(r.family, r.setting) for r in runs}
    # The seed, data.seed and the seed-named logger never make a setting; hardware and a swept model key do.
    assert settings == {("gan", "cpu"), ("vae", "cpu"), ("vae", "gpu_bf16"), ("diffusion", "cpu, model.beta=1"),
                        ("diffusion", "cpu, model.beta=2")}  # fmt: skip
    summary = build_summary(runs, [])
    markdown = to_markdown(summary)
    fid = {(row["family"], row["setting"]): row["fid_mean"] for row in table_rows(summary)}
    assert fid[("gan", "cpu")] == 20.5 and fid[("vae", "gpu_bf16")] == 50.5
    assert markdown.count("| **10.0** |") == 2  # the lowest FID (both diffusion rows, one seed each) in bold
    lines = {line.split(" | ")[0] + line.split(" | ")[1]: line for line in markdown.splitlines() if line.startswith("| ")}
    assert "**" not in lines["| gancpu"]
    best_is = re.compile(r"\*\*3\.5\d ± 0\.01\*\*")  # the highest IS (3 + FID/100), tied on both vae rows
    assert best_is.search(lines["| vaecpu"]) and best_is.search(lines["| vaegpu_bf16"])


def test_fid_inf_is_a_column_and_records_from_before_it_show_a_dash(tmp_path):
    new = _metrics(20.0) | {"fid_inf": 18.25, "is_inf": 3.3, "density": 0.9, "coverage": 0.7}
    runs = [_run(tmp_path, "gan", 0, metrics=new), _run(tmp_path, "vae", 0, metrics=_metrics(30.0))]
    assign_settings(runs)
    summary = build_summary(runs, [])
    rows = {line.split(" | ")[0]: line for line in to_markdown(summary).splitlines() if line.startswith("| ")}
    assert "| FID | FID∞ | KID |" in rows["| family"]
    assert "| **20.0** | 18.2 | 0.0100 |" in rows["| gan"] and "| 30.0 | – | 0.0100 |" in rows["| vae"]
    assert "FID$\\infty$" in to_latex(summary)
    assert {r["family"]: r["density"] for r in run_rows(runs)} == {"gan": 0.9, "vae": None}


@requires_fmnist
def test_ddim_plot_fid_curve_and_compute_curves_from_a_diffusion_run(tmp_path, fmnist):
    """One tiny diffusion run with in-training FID; the report draws the DDIM X-Y plot, its FID curve and FID vs compute."""
    record = train_run(tmp_path / "runs" / "ddim" / "diffusion-seed0", "diffusion", "budget.max_steps=3",
                       "callbacks.fid.every_n_steps=2", "callbacks.fid.n_samples=40", "metrics.extractor=fmnist_classifier",
                       "metrics.n_reference=1000")  # fmt: skip
    assert record["status"] == "completed"
    assert "fid" in (tmp_path / "runs" / "ddim" / "diffusion-seed0" / "metrics.csv").read_text()
    stamp = report(_report_cfg(f"sweep={tmp_path / 'runs'}", f"out={tmp_path / 'out'}", "report.samples=false",
                               "report.ddim_steps=[1,2,4]", "report.ddim_seeds=[0,1]", "report.ddim_fid_n=40",
                               "report.ddim_fid_steps=null", "report.throughput=false"))  # fmt: skip
    figures = tmp_path / "out" / "figures"
    expected = {"ddim_steps.png", "ddim_steps.pdf", "ddim_fid.csv", "fid_vs_compute.png", "fid_vs_compute.pdf"}
    assert expected <= {p.name for p in figures.iterdir()}
    assert [int(r["steps"]) for r in _rows(figures / "ddim_fid.csv")] == [1, 2, 4]
    assert all(float(r["train_flops"]) > 0 for r in _rows(figures / "fid_vs_compute.csv"))  # FID against FLOPs too
    chunks = read_png_text(figures / "ddim_steps.png")
    assert chunks["AI-generated"] == "true" and chunks["genbench:family"] == "diffusion" and chunks["genbench:sampler"] == "ddim"
    assert not [n for n in stamp["notes"] if "ddim" in n.lower() or "compute" in n]


def test_git_stamp_is_dirty_for_code_changes_only(tmp_path):
    """Regenerating committed results rewrites tracked files; that must not mark the runs' commit dirty."""
    import subprocess

    from genbench.training.record import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)  # fmt: skip

    for name in ("src/genbench/x.py", "conf/train.yaml", "results/demo/table.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "c")
    where = tmp_path / "src" / "genbench"
    clean = git_commit(where)
    assert clean and len(clean) == 40
    (tmp_path / "results" / "demo" / "table.md").unlink()
    assert git_commit(where) == clean
    (tmp_path / "conf" / "train.yaml").write_text("v2\n")
    assert git_commit(where) == clean + "-dirty"


def _scored(fid: float, n_fake: int = 1000, sampler: dict | None = None) -> dict:
    """A record as the evaluator writes it, with its protocol."""
    from genbench.metrics import MetricsConfig
    from genbench.metrics.protocol import make_protocol, protocol_fields

    fields = protocol_fields(MetricsConfig(), "fmnist_classifier", "f" * 64, "fmnist/test@28px", 10000, n_fake, sampler,
                             True, True)  # fmt: skip
    protocol = make_protocol(fields)
    return _metrics(fid, n_fake) | {"protocol": protocol.id, "scoring_protocol": protocol.scoring_id,
                                    "protocol_fields": fields, "sampler_settings": sampler,
                                    "sampler": sampler and sampler["sampler"], "sampler_steps": sampler and sampler["steps"]}  # fmt: skip


def test_one_table_per_scoring_protocol_one_row_per_full_protocol(tmp_path):
    ddim20 = {"sampler": "ddim", "steps": 20, "eta": 0.0, "guidance_scale": 1.0}
    ddpm100 = {"sampler": "ddpm", "steps": 100, "eta": None, "guidance_scale": 1.0}
    runs = [_run(tmp_path, "gan", s, metrics=_scored(20.0 + s)) for s in (0, 1)]
    for seed in (0, 1):  # each diffusion run scored under its own protocol (DDIM 20) and re-scored with DDPM 100
        run = _run(tmp_path, "diffusion", seed, metrics=_scored(10.0 + seed, sampler=ddim20))
        run.scores = [run.metrics, _scored(5.0 + seed, sampler=ddpm100), _scored(50.0, n_fake=50, sampler=ddim20)]
        runs.append(run)
    assign_settings(runs)
    summary = build_summary(runs, [])
    main, small = summary.tables
    # The GAN sits beside both diffusion samplers; each row is one full protocol, so nothing is averaged across them.
    rows = {(g.family, g.label): (len(g.runs), g.protocol) for g in main.groups}
    assert set(rows) == {("gan", "cpu"), ("diffusion", "cpu, sampler ddim, 20 steps, eta 0, guidance_scale 1"),
                         ("diffusion", "cpu, sampler ddpm, 100 steps, guidance_scale 1")}  # fmt: skip
    assert all(n == 2 for n, _ in rows.values()) and len({p for _, p in rows.values()}) == 3
    fid = {(r["family"], r["setting"].split(", ")[1] if ", " in r["setting"] else ""): r["fid_mean"]
           for r in table_rows(summary) if r["table"] == 1}  # fmt: skip
    assert fid == {("gan", ""): 20.5, ("diffusion", "sampler ddim"): 10.5, ("diffusion", "sampler ddpm"): 5.5}
    assert f"Protocol {main.protocol}" in main.caption and "-ddim20-" in main.caption and "-ddpm100-" in main.caption
    assert [(g.family, len(g.runs)) for g in small.groups] == [("diffusion", 2)] and "n_fake=50" in small.caption
    assert any("different evaluation protocols" in note for note in summary.notes)
    assert "| diffusion | cpu, sampler ddpm, 100 steps, guidance_scale 1 | 2 |" in to_markdown(summary)


def test_runs_csv_columns_are_unique_and_name_the_run_own_protocol(tmp_path):
    from genbench.report.tables import run_rows

    run = _run(tmp_path, "gan", 0, metrics=_scored(20.0))
    run.scores = [run.metrics, _scored(30.0, n_fake=50)]
    (row,) = run_rows([run])
    assert row["precision"] == 0.5 and row["hardware_precision"] == "32-true" and row["hardware_name"] == "cpu"
    assert row["protocol"] == run.metrics["protocol"] and len(row["all_protocols"].split()) == 2


def test_report_into_an_existing_file_is_refused_before_any_work(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("mine\n")
    with pytest.raises(GenbenchError, match="is a file"):
        report(_report_cfg(f"sweep={tmp_path / 'no_sweep_needed'}", f"out={target}"))
    assert target.read_text() == "mine\n"


def test_every_family_has_a_colour_and_comes_from_conf_model(monkeypatch):
    """The families are conf/model's files; one outside the palette still gets its own colour, none of the palette's."""
    import genbench.models
    from genbench.models import families
    from genbench.report import figures as fig

    assert families() == sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    assert all(fig.family_color(f) == fig.PALETTE[f] for f in fig.PALETTE)
    monkeypatch.setattr(genbench.models, "families", lambda: [*fig.PALETTE, "new_a", "new_b"])
    spare = {fig.family_color("new_a"), fig.family_color("new_b"), fig.family_color("from_elsewhere")}
    assert len(spare) == 3 and not spare & set(fig.PALETTE.values())


# ------------------------------------------------------------------------------------------- genbench.reproduce


@requires_fmnist
def test_reproduce_retrains_and_rescores_a_results_folder_to_the_same_weights_and_scores(sweeps, tmp_path):
    """The report's folder alone is enough: each run retrained to its recorded step and rescored under its protocol
    gives the same weights (run.json's weights_sha256) and the same score in every cell, on this machine."""
    results = sweeps["out"] / "smoke"
    assert sorted(p.name for p in (results / "runs").iterdir()) == sorted(r.parent.name for r in (sweeps["root"] / "smoke").glob("*/run.json"))
    copied = next((results / "runs").iterdir())
    assert "paths" not in (copied / "config.yaml").read_text() and "run_dir" not in json.loads((copied / "run.json").read_text())
    result = run_cli("reproduce", str(results), "--only", "gan", "--out", str(tmp_path / "again"), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    cells = json.loads((tmp_path / "again" / "reproduce.json").read_text())["cells"]
    assert {c["run"] for c in cells} == {p.name for p in (results / "runs").iterdir() if "gan" in p.name}
    assert {"weights_sha256", "steps", "fid", "fid_inf", "precision", "density"} <= {c["field"] for c in cells}
    assert all(c["same"] for c in cells), [c for c in cells if not c["same"]]
    assert all(c["seed_spread"] is not None for c in cells if c["field"] == "fid")  # two seeds: their spread shown
    assert "cells reproduced exactly" in result.stdout


@requires_fmnist
@pytest.mark.parametrize("case", ["no_records", "extractor_missing", "other_data", "set_budget"])
def test_reproduce_refuses_what_it_cannot_rebuild_before_training(sweeps, tmp_path, case, capsys):
    from genbench.reproduce import main

    results = tmp_path / "smoke"
    shutil.copytree(sweeps["out"] / "smoke", results)
    score_file = next((results / "runs").glob("*gan*/metrics/*.json"))
    score = json.loads(score_file.read_text())
    if case == "no_records":
        shutil.rmtree(results / "runs")
        words = ["no run records", "genbench.report"]
    elif case == "extractor_missing":
        score["metrics_config"]["extractor_weights"] = str(tmp_path / "gone.pt")
        words = ["gone.pt", "not a file"]
    elif case == "set_budget":  # a deliberate change may not touch what the record fixes
        words = ["--set budget.max_steps=9", "not budget"]
    else:  # the reference data here is not the data the score was made against
        score["protocol"] = score["protocol"][:-8] + "00000000"
        score["protocol_fields"]["reference"] = "fashion_mnist-0000000000000000-test/test@28px"
        words = ["cannot be rebuilt", "reference", "fashion_mnist-0000000000000000"]
    if case != "no_records":
        score_file.write_text(json.dumps(score))
    with pytest.raises(SystemExit) as exit_info:  # in-process: the command's own main, without a new interpreter
        main([str(results), "--out", str(tmp_path / "again"), *(["--set", "budget.max_steps=9"] if case == "set_budget" else [])])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("genbench: error:"), lines
    assert all(word in lines[0] for word in words), lines[0]
    assert not (tmp_path / "again").exists()  # refused before any run was trained


def test_committed_results_name_no_folder_of_the_machine_that_made_them():
    """A reviewer's clone has no /work/main or /tmp/exp: results name sweeps relative to the repository or by name."""
    machine = re.compile(r'"(/(?:work|tmp|root|home|Users)/[^"]*)"')
    for path in sorted((REPO / "results").rglob("*")):
        if path.suffix in (".json", ".md", ".csv", ".yaml", ".tex"):
            found = machine.findall(path.read_text(errors="replace"))
            assert not found, f"{path.relative_to(REPO)} names {found[:3]}"


@pytest.mark.parametrize("budget, words", [({"max_flops": "7T", "max_steps": None}, "7T training FLOPs (counted"),
                                           ({"max_flops": 2e13}, "20T training FLOPs"),
                                           ({"max_minutes": 1.5}, "1.5 minutes of training (wall-clock"),
                                           ({"max_images": 40000}, "40,000 training images")])  # fmt: skip
def test_a_tables_caption_says_its_budget_and_whether_it_travels(budget, words):
    from genbench.report.tables import budget_text

    assert words in budget_text(budget)


def _two_extractor_runs(tmp_path: Path, fids: dict[str, tuple[float, float]]) -> list[Run]:
    """One run per family scored under both extractors (metrics.extractors), its FID under each given."""
    from genbench.metrics import MetricsConfig
    from genbench.metrics.protocol import make_protocol, protocol_fields

    runs = []
    for family, values in fids.items():
        scores = []
        for extractor, fid, has_is in zip(("fmnist_classifier", "fmnist_ssl"), values, (True, False)):
            fields = protocol_fields(MetricsConfig(), extractor, extractor[0] * 64, "fmnist/test@28px", 10000, 1000,
                                     None, has_is, True)  # fmt: skip
            protocol = make_protocol(fields)
            score = _metrics(fid, extractor=extractor) | {"protocol": protocol.id, "scoring_protocol": protocol.scoring_id,
                                                          "protocol_fields": fields, "kid_mean": fid / 1000}  # fmt: skip
            scores.append(score | ({} if has_is else {"is_mean": None}))
        run = _run(tmp_path, family, 0, metrics=scores[0])
        run.scores = scores
        runs.append(run)
    assign_settings(runs)
    return runs


def test_a_table_per_extractor_with_kendall_tau_and_a_flag_where_rankings_disagree(tmp_path):
    agree = build_summary(_two_extractor_runs(tmp_path, {"gan": (5, 50), "vae": (15, 70), "diffusion": (10, 60)}), [])
    first, second = agree.tables
    assert [t.runs[0].metrics["extractor"] for t in agree.tables] == ["fmnist_classifier", "fmnist_ssl"]
    [pair] = agree.agreements
    assert pair.tables == (1, 2) and pair.rows == 3 and pair.tau["FID"] == 1.0 and pair.tau["KID"] == 1.0
    assert "IS" not in pair.tau  # the label-free extractor has no class posterior: nothing to rank by
    assert pair.disagree == [] and "The rankings agree" in first.caption and "Table 2 (fmnist_ssl" in first.caption
    swapped = build_summary(_two_extractor_runs(tmp_path, {"gan": (5, 70), "vae": (15, 50), "diffusion": (10, 60)}), [])
    [pair] = swapped.agreements
    assert pair.tau["FID"] == pytest.approx(-1.0) and pair.disagree == ["FID", "KID"]
    for table in swapped.tables:  # the flag is in both captions, in Markdown and LaTeX
        assert "**The rankings disagree** on FID, KID" in table.caption
    assert "The rankings disagree" in to_latex(swapped) and "The rankings disagree" in to_markdown(swapped)
    one = build_summary(_two_extractor_runs(tmp_path, {"gan": (5, 70)})[:1], [])
    assert one.agreements[0].tau["FID"] is None  # one row ranks nothing: n/a, not agreement
