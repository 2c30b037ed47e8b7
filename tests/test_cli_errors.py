"""Bad input on the command line: one ``genbench: error:`` line on stderr, exit 2, and no run folder left behind.

The commands run in one fixture through ``run_cli_batch`` (one Lightning import for all) and each test reads its own.
"""

from __future__ import annotations

import pytest

from conftest import assert_contract_error, run_cli_batch

# name -> (entry point, arguments, words the error line must hold)
CASES = {
    "missing_data_root": ("train", ["data.root=/nonexistent/fmnist"], ["data.root", "/nonexistent/fmnist"]),
    "unknown_model": ("train", ["model=transformer"], ["transformer", "gan", "vae", "diffusion"]),
    "negative_budget": ("train", ["budget.max_steps=-3"], ["budget.max_steps=-3", "positive"]),
    "unusable_image_size": ("train", ["data.image_size=50"], ["data.image_size=50", "28"]),
    "text_file_as_checkpoint": ("sample", [], ["not a readable checkpoint"]),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    fake_ckpt = root / "notes.ckpt"
    fake_ckpt.write_text("this is not a checkpoint\n")
    jobs = {}
    for name, (module, args, _) in CASES.items():
        if module == "train":
            jobs[name] = (module, [*args, f"paths.runs_dir={root / name}"])
        else:
            jobs[name] = (module, [f"ckpt={fake_ckpt}", "n=2", f"out={root / name / 'out'}"])
    return root, run_cli_batch(jobs, root / "logs")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_exit_2(outcomes, case):
    root, results = outcomes
    assert_contract_error(results[case], *CASES[case][2])
    assert "Traceback" not in results[case].stderr
    left = [p for p in (root / case).rglob("*") if p.is_file()] if (root / case).exists() else []
    assert left == [], f"{case} left files behind: {left}"
