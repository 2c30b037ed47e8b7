"""A new user's first hour: bars that end full in the budget's units, metrics.csv always written, none of
Lightning's irrelevant lines, and a short ``evaluate`` summary (its record is in the file, tests/test_evaluate.py).

One real ``genbench.train`` command (through ``run_cli_batch``) and in-process checks of the pieces.
"""

from __future__ import annotations

import csv
import logging
import re
import warnings

import pytest
import torch

from conftest import TINY_MODEL, run_cli_batch
from genbench.diffusion import NoiseSchedule
from genbench.diffusion.registry import SAMPLERS, build_sampler
from genbench.metrics.summary import score_summary
from genbench.quiet import quiet_lightning

STEPS = 3  # fewer than trainer.log_every_n_steps (25, the default)
# What Lightning printed on every run (and a parallel sweep's every job) before genbench/quiet.py
LIGHTNING_NOISE = ("GPU available", "TPU available", "HPU available", "Automatic Mixed Precision", "litlogger",
                   "LeafSpec", "validation_step", "logging interval")  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def last_frame(output: str, marker: str) -> str:
    """The last drawn line holding ``marker`` in a terminal's or a log's output (control codes removed)."""
    lines = [line for line in re.split(r"[\r\n]", _ANSI.sub("", output)) if marker in line]
    assert lines, output[-2000:]
    return lines[-1]


@pytest.fixture(scope="module")
def cli_train(tmp_path_factory, fmnist):
    """A GAN run of STEPS batches at the default logging interval, its bar drawn as on a terminal."""
    root = tmp_path_factory.mktemp("first_hour")
    args = ["model=gan", *TINY_MODEL["gan"], "data.subset=64", "data.batch_size=16", "callbacks.sample_grid.n=8",
            f"budget.max_steps={STEPS}", "name=first", f"paths.runs_dir={root}"]  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TTY_COMPATIBLE", "1")  # rich draws as on a terminal: frames, then the final one
        result = run_cli_batch({"train": ("train", args)}, root / "logs")["train"]
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "first" / "gan-seed0", result


def test_train_prints_none_of_lightnings_irrelevant_lines(cli_train):
    _, result = cli_train
    for line in LIGHTNING_NOISE:
        assert line not in result.stderr + result.stdout, line


def test_metrics_csv_is_written_by_a_run_shorter_than_the_logging_interval(cli_train):
    run_dir, _ = cli_train
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {"epoch", "step", "train/d_loss", "train/g_loss"} <= set(rows[0]), rows
    assert int(rows[-1]["step"]) == STEPS - 1  # the final batch (steps count from 0 as in every other row)


def test_training_bar_ends_full_in_the_budgets_units(cli_train):
    _, result = cli_train
    frame = last_frame(result.stdout, " batches")
    assert f"{STEPS}/{STEPS} batches" in frame and re.findall(r"\d+/\d+", frame) == [f"{STEPS}/{STEPS}"], frame


@pytest.mark.parametrize("terminal", ["1", "0"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampling_bar_ends_at_its_total(name, terminal, capsys, monkeypatch):
    """DPM-Solver++ returns from inside its loop on the last step: its bar used to stop at steps - 1. The adaptive
    dopri5 counts network evaluations, whose number is known only at the end."""
    monkeypatch.setenv("TTY_COMPATIBLE", terminal)
    sampler = build_sampler(name, steps=4)
    sampler(lambda x, t: 0.3 * x, NoiseSchedule(1000), torch.randn(2, 1, 4, 4), torch.Generator().manual_seed(0),
            progress=True)  # fmt: skip
    err = capsys.readouterr().err
    total = sampler.last_nfe if sampler.adaptive else sampler.steps
    assert f"{total}/{total}" in last_frame(err, "Sampler"), err


def test_quiet_lightning_silences_only_the_irrelevant():
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = rank_zero.level
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_lightning()
            for message, module in [
                ("The number of training batches (4) is smaller than the logging interval Trainer(...).",
                 "pytorch_lightning.loops.fit_loop"),
                ("You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.",
                 "pytorch_lightning.trainer.configuration_validator"),
                ("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.",
                 "pytorch_lightning.trainer.setup"),
                ("The number of training batches (4) is smaller than the logging interval", "my_own_module"),
            ]:  # fmt: skip
                warnings.warn_explicit(message, UserWarning, "x.py", 1, module=module)
        assert [str(w.message)[:20] for w in caught] == ["GPU available but no", "The number of traini"]
        assert not rank_zero.isEnabledFor(logging.INFO) and rank_zero.isEnabledFor(logging.WARNING)
    finally:
        rank_zero.setLevel(level)


def test_evaluate_summary_is_short_and_names_scores_and_files(tmp_path):
    record = {"protocol": "fmnist_classifier-n100-aeeb365c", "n_fake": 100, "n_real": 1000, "fid": 12.3456,
              "fid_inf": 11.02, "kid_mean": 0.01234, "kid_std": 0.00056, "is_mean": 5.4321, "is_std": 0.123,
              "precision": 0.8123, "recall": 0.7, "density": 0.91, "coverage": 0.655, "memorization": None,
              "extractor": "fmnist_classifier", "protocol_fields": {"x": "y" * 2000}}  # fmt: skip
    lines = score_summary(record, [tmp_path / "a b.json", tmp_path / "metrics.json"]).splitlines()
    assert lines == [
        "protocol fmnist_classifier-n100-aeeb365c: 100 generated against 1000 real images, fmnist_classifier features",
        "FID 12.35 · FID∞ 11.02 · KID 0.0123 ± 0.0006 · IS 5.43 ± 0.12 · precision 0.812 · recall 0.700 · "
        "density 0.910 · coverage 0.655 · memorization n/a",
        f"wrote {tmp_path / 'a b.json'}",
        f"wrote {tmp_path / 'metrics.json'}",
    ]
