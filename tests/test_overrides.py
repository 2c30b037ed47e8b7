"""Names and paths with spaces or non-ASCII letters on the command line (README: "Spaces and other letters").

Arguments are given as the shell hands them over: ``name="my run"`` typed at a prompt arrives as ``name=my run``,
and ``'name="über"'`` as ``name="über"``. All commands run in one batch (one Lightning import); later ones use
the earlier ones' runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import TINY_MODEL, assert_contract_error, requires_fmnist, run_cli_batch

pytestmark = requires_fmnist
TINY = ["callbacks.sample_grid.n=4", "sampler.steps=2", "budget.max_steps=2", "callbacks.progress_bar.refresh_rate=0"]
FAST_METRICS = ["metrics.n_samples=50", "metrics.n_reference=1000", "metrics.heldout_split=val", "metrics.kid_subsets=5",
                "metrics.extractor=fmnist_classifier"]  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, fmnist):
    root = tmp_path_factory.mktemp("overrides")
    images = root / "bilder ü"  # a data folder with a space and a non-ASCII letter
    images.mkdir()
    for i in range(12):
        Image.fromarray(np.full((28, 28), 20 * i, dtype=np.uint8)).save(images / f"{i}.png")
    runs = root / "runs"
    gan_ckpt = runs / "über" / "gan-seed0" / "checkpoints" / "last.ckpt"
    diffusion_ckpt = runs / "my run" / "diffusion-seed0" / "checkpoints" / "last.ckpt"
    jobs = {
        # spaces need no quotes of Hydra's; a non-ASCII letter does, in a name and in a path
        "spaced_name": ("train", ["model=diffusion", *TINY_MODEL["diffusion"], *TINY, "data=imagefolder",
                                  f'data.root="{images}"', "data.batch_size=4", "name=my run", f"paths.runs_dir={runs}"]),
        "quoted_umlaut_name": ("train", ["model=gan", *TINY_MODEL["gan"], *TINY, "data.subset=64", "data.batch_size=16",
                                         'name="über"', f"paths.runs_dir={runs}"]),
        "unquoted_umlaut_name": ("train", ["name=über", f"paths.runs_dir={root}/refused"]),
        "unquoted_umlaut_out": ("sample", [f"ckpt={diffusion_ckpt}", "n=2", f"out={root}/proben ü"]),
        "sample_out": ("sample", [f"ckpt={diffusion_ckpt}", "n=2", f'out="{root}/x y/proben ü"']),
        "evaluate_out": ("evaluate", [f'ckpt="{gan_ckpt}"', *FAST_METRICS, f'out="{root}/x y/score ü.json"']),
    }  # fmt: skip
    return root, run_cli_batch(jobs, root / "logs")


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_name_with_spaces_and_a_quoted_data_path_train(outcomes):
    root, results = outcomes
    _ok(results["spaced_name"])
    run_dir = root / "runs" / "my run" / "diffusion-seed0"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["steps"] == 2
    assert OmegaConf.load(run_dir / "config.yaml").data.root == str(root / "bilder ü")


def test_a_quoted_non_ascii_name_is_the_run_folders_name(outcomes):
    root, results = outcomes
    _ok(results["quoted_umlaut_name"])
    record = json.loads((root / "runs" / "über" / "gan-seed0" / "run.json").read_text())
    assert record["status"] == "completed" and record["run_dir"] == str(root / "runs" / "über" / "gan-seed0")


@pytest.mark.parametrize("case, quoted", [("unquoted_umlaut_name", "'name=\"über\"'"),
                                          ("unquoted_umlaut_out", "'out=\"{root}/proben ü\"'")])  # fmt: skip
def test_an_unquoted_non_ascii_value_is_refused_with_how_to_quote_it(outcomes, case, quoted):
    root, results = outcomes
    assert_contract_error(results[case], "Hydra's quotes", quoted.format(root=root))
    assert not (root / "refused").exists() and not (root / "proben ü").exists()


def test_sample_writes_to_a_quoted_folder_with_spaces_and_non_ascii_letters(outcomes):
    root, results = outcomes
    summary = json.loads(_ok(results["sample_out"]).stdout.strip().splitlines()[-1])
    out = root / "x y" / "proben ü"
    assert summary["out"] == str(out) and len(list(out.glob("sample_*.png"))) == 2
    assert (root / "x y" / "proben ü_grid.png").is_file()


def test_evaluate_writes_to_a_quoted_file_with_spaces_and_non_ascii_letters(outcomes):
    root, results = outcomes
    result = _ok(results["evaluate_out"])
    out = root / "x y" / "score ü.json"
    record = json.loads(out.read_text())
    assert record["n_fake"] == 50 and f"wrote {out}" in result.stdout.splitlines()
