"""``python -m genbench.sample`` as a user runs it, on a tiny class-conditional diffusion checkpoint.

The three commands share one Lightning import (``run_cli_batch``); every PNG they write is checked
against the same checkpoint sampled in-process, so the seed, sampler settings and prompt must really reach it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_contract_error, run_cli_batch, train_run
from genbench.data.idx import CLASS_NAMES
from genbench.imageio import read_png_text, to_uint8
from genbench.models import file_sha256, load_checkpoint

N = 16


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fmnist):
    root = tmp_path_factory.mktemp("sample")
    train_run(root / "run", "diffusion", "budget.max_steps=2")
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    jobs = {
        "plain": ("sample", [f"ckpt={ckpt}", f"n={N}", f"out={root / 'plain'}", "sampler=ddim", "sampler.steps=5"]),
        "sneaker": ("sample", [f"ckpt={ckpt}", "n=4", f"out={root / 'sneaker'}", "sampler.steps=3", "prompt=Sneaker",
                               "seed=3"]),  # fmt: skip
        "foo": ("sample", [f"ckpt={ckpt}", "n=4", f"out={root / 'foo'}", "prompt=Foo"]),
    }
    return root, ckpt, run_cli_batch(jobs, root / "logs")


def pngs(folder) -> list:
    return sorted(folder.glob("sample_*.png"))


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_writes_n_pngs_and_a_grid_with_provenance(runs):
    root, ckpt, results = runs
    result = results["plain"]
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == N and summary["family"] == "diffusion"
    files = pngs(root / "plain")
    assert len(files) == N and (root / "plain" / "grid.png").is_file()
    sha = file_sha256(ckpt)
    for path in [*files, root / "plain" / "grid.png"]:
        text = read_png_text(path)
        assert text["AI-generated"] == "true" and text["genbench:family"] == "diffusion", text
        assert text["genbench:checkpoint_sha256"] == sha and text["genbench:seed"] == "0", text
        assert text["genbench:sampler"] == "ddim" and text["genbench:sampler_steps"] == "5", text


def test_pngs_are_the_checkpoints_samples_for_that_seed_and_sampler(runs):
    root, ckpt, _ = runs
    model, _ = load_checkpoint(ckpt)
    expected = to_uint8(model.sample(N, generator=torch.Generator().manual_seed(0), sampler="ddim", steps=5))
    for i, path in enumerate(pngs(root / "plain")):
        np.testing.assert_array_equal(pixels(path), expected[i, 0].numpy(), err_msg=path.name)


def test_prompt_names_the_class_of_every_sample(runs):
    root, ckpt, results = runs
    assert results["sneaker"].returncode == 0, results["sneaker"].stderr[-3000:]
    files = pngs(root / "sneaker")
    assert len(files) == 4
    sneaker = CLASS_NAMES.index("Sneaker")
    assert all(read_png_text(path)["genbench:label"] == str(sneaker) for path in files)
    model, _ = load_checkpoint(ckpt)
    expected = to_uint8(model.sample(4, labels=sneaker, generator=torch.Generator().manual_seed(3), steps=3))
    for i, path in enumerate(files):
        np.testing.assert_array_equal(pixels(path), expected[i, 0].numpy(), err_msg=path.name)


def test_unknown_prompt_lists_the_valid_classes(runs):
    root, _, results = runs
    line = assert_contract_error(results["foo"], "Foo", "Sneaker", "Ankle boot", "T-shirt/top")
    assert not (root / "foo").exists(), line
