"""``python -m genbench.sample`` as a user runs it, on tiny class-conditional diffusion and GAN checkpoints.

The commands share one Lightning import (``run_cli_batch``); every PNG they write is checked against the same
checkpoint sampled in-process with per-image noise, so the seed, sampler settings and prompt must really reach it,
and the batch size must not matter. Bad input fails before sampling and leaves no folder behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_contract_error, run_cli_batch, train_run
from genbench.data.idx import CLASS_NAMES
from genbench.imageio import read_png_text, to_uint8
from genbench.metrics import model_sampler
from genbench.models import file_sha256, load_checkpoint
from genbench.noise import IndexedNoise

N = 16
# Bad input: name -> (arguments after ckpt=, words of the error line)
BAD = {
    "n_not_a_number": (["n=abc", "out={root}/bad"], ["n=abc", "integer"]),
    "batch_size_zero": (["batch_size=0", "out={root}/bad"], ["batch_size=0", "auto or a positive integer"]),
    "batch_size_word": (["batch_size=big", "out={root}/bad"], ["batch_size=big", "auto or an integer"]),
    "seed_not_a_number": (["seed=abc", "out={root}/bad"], ["seed=abc"]),
    "bogus_device": (["device=bogus", "out={root}/bad"], ["device=bogus"]),
    "out_is_a_file": (["out={root}/a_file.txt"], ["a_file.txt", "is a file"]),
    "out_holds_files": (["out={root}/plain"], ["already holds files"]),  # after "plain" has written there
    "unknown_sampler": (["sampler.name=bogus", "out={root}/bad"], ["bogus"]),
    "gan_guidance": (["out={root}/bad", "sampler.guidance_scale=3"], ["guidance_scale=3", "gan"]),
    "gan_sampler": (["out={root}/bad", "sampler=ddpm"], ["takes no sampler", "sampler=ddpm"]),
    # image prompts
    "strength_above_one": (["out={root}/bad", "image={root}/prompts", "strength=1.5"], ["strength=1.5"]),
    "strength_below_zero": (["out={root}/bad", "image={root}/prompts", "strength=-0.2"], ["strength=-0.2"]),
    "strength_without_image": (["out={root}/bad", "strength=0.3"], ["strength=0.3", "image="]),
    "gan_no_inversion_steps": (["out={root}/bad", "image={root}/prompts", "inversion.steps=0"], ["inversion.steps=0"]),
    "image_missing": (["out={root}/bad", "image={root}/nowhere"], ["nowhere", "does not exist"]),
    "image_folder_empty": (["out={root}/bad", "image={root}/no_images"], ["no_images", "holds no images"]),
    "image_unreadable": (["out={root}/bad", "image={root}/prompts_bad/broken.png"], ["broken.png", "not a readable image"]),
    "image_zero_bytes": (["out={root}/bad", "image={root}/prompts_bad/zero.png"], ["zero.png", "empty"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fmnist):
    root = tmp_path_factory.mktemp("sample")
    train_run(root / "run", "diffusion", "budget.max_steps=2")
    train_run(root / "gan", "gan", "budget.max_steps=2")
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    gan = root / "gan" / "checkpoints" / "last.ckpt"
    (root / "a_file.txt").write_text("not a folder\n")
    write_prompt_images(root)
    plain = [f"ckpt={ckpt}", f"n={N}", "sampler=ddim", "sampler.steps=5"]
    jobs = {
        "plain": ("sample", [*plain, f"out={root / 'plain'}"]),
        "batch3": ("sample", [*plain, f"out={root / 'batch3'}", "batch_size=3"]),
        "ddpm_batch5": ("sample", [f"ckpt={ckpt}", f"n={N}", "sampler=ddpm", "sampler.steps=4", f"out={root / 'ddpm5'}",
                                   "batch_size=5"]),  # fmt: skip
        "ddpm": ("sample", [f"ckpt={ckpt}", f"n={N}", "sampler=ddpm", "sampler.steps=4", f"out={root / 'ddpm'}"]),
        "sneaker": ("sample", [f"ckpt={ckpt}", "n=4", f"out={root / 'sneaker'}", "sampler.steps=3", "prompt=Sneaker",
                               "seed=3"]),  # fmt: skip
        "gan": ("sample", [f"ckpt={gan}", f"n={N}", f"out={root / 'gan_out'}"]),
        "foo": ("sample", [f"ckpt={ckpt}", "n=4", f"out={root / 'foo'}", "prompt=Foo"]),
        "prompt_gan": ("sample", [f"ckpt={gan}", f"image={root / 'prompts'}", "strength=0.5", "inversion.steps=3",
                                  "prompt=Sneaker", f"out={root / 'prompt_gan'}"]),  # fmt: skip
        "prompt_rgb": ("sample", [f"ckpt={ckpt}", f"image={root / 'photo.jpg'}", "n=2", "strength=0.5",
                                  "sampler=ddim", "sampler.steps=4", f"out={root / 'prompt_rgb'}"]),  # fmt: skip
        "score_own_output": ("evaluate", [f"samples={root / 'plain'}", f"metrics.n_samples={N}", "metrics.n_reference=100",
                                          "metrics.extractor=fmnist_classifier", "metrics.memorization=false"]),
        **{name: ("sample", [f"ckpt={gan if name.startswith('gan') else ckpt}", "n=4",
                             *[a.format(root=root) for a in args]]) for name, (args, _) in BAD.items()},
    }  # fmt: skip
    return root, ckpt, run_cli_batch(jobs, root / "logs")


def write_prompt_images(root: Path) -> None:
    """Three 28-px grey prompts, a 40x30 colour JPEG, an empty folder, a broken and a zero-byte 'PNG'."""
    (root / "prompts").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / "prompts" / f"p{i}.png")
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "photo.jpg")
    (root / "no_images").mkdir()
    (root / "prompts_bad").mkdir()
    (root / "prompts_bad" / "broken.png").write_text("not an image\n")
    (root / "prompts_bad" / "zero.png").write_bytes(b"")


def pngs(folder) -> list:
    return sorted(folder.glob("sample_*.png"))


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_writes_n_pngs_and_a_grid_beside_them_with_provenance(runs):
    root, ckpt, results = runs
    result = results["plain"]
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == N and summary["family"] == "diffusion" and summary["grid"] == str(root / "plain_grid.png")
    files = pngs(root / "plain")
    # The folder holds the samples only (and metrics/, the score "score_own_output" wrote after this command).
    assert len(files) == N and sorted(p for p in (root / "plain").iterdir() if p.name != "metrics") == files
    sha = file_sha256(ckpt)
    for path in [*files, root / "plain_grid.png"]:
        text = read_png_text(path)
        assert text["AI-generated"] == "true" and text["genbench:family"] == "diffusion", text
        assert text["genbench:checkpoint_sha256"] == sha and text["genbench:seed"] == "0", text
        assert text["genbench:sampler"] == "ddim" and text["genbench:sampler_steps"] == "5", text
    assert not list(root.glob(".*tmp*")), "temporary folders left behind"


def test_pngs_are_the_checkpoints_samples_for_that_seed_and_sampler(runs):
    root, ckpt, _ = runs
    model, _ = load_checkpoint(ckpt)
    expected = to_uint8(model.sample(N, generator=IndexedNoise.range(0, 0, N), sampler="ddim", steps=5))
    for i, path in enumerate(pngs(root / "plain")):
        np.testing.assert_array_equal(pixels(path), expected[i, 0].numpy(), err_msg=path.name)


@pytest.mark.parametrize("pair", [("plain", "batch3"), ("ddpm", "ddpm5")])
def test_batch_size_does_not_change_any_image(runs, pair):
    root, _, results = runs
    assert all(results[name].returncode == 0 for name in ("plain", "batch3", "ddpm", "ddpm_batch5"))
    first, second = pngs(root / pair[0]), pngs(root / pair[1])
    assert len(first) == len(second) == N
    for a, b in zip(first, second):
        np.testing.assert_array_equal(pixels(a), pixels(b), err_msg=f"{a.name} differs between batch sizes")


def test_prompt_names_the_class_of_every_sample(runs):
    root, ckpt, results = runs
    assert results["sneaker"].returncode == 0, results["sneaker"].stderr[-3000:]
    files = pngs(root / "sneaker")
    assert len(files) == 4
    sneaker = CLASS_NAMES.index("Sneaker")
    assert all(read_png_text(path)["genbench:label"] == str(sneaker) for path in files)
    model, run_cfg = load_checkpoint(ckpt)
    # Only sampler.steps was given: the rest is the run's own sampler (its training config's), not sample.yaml's.
    settings = model_sampler(model, {**run_cfg.sampler, "steps": 3})
    assert settings["sampler"] == run_cfg.sampler.name
    expected = to_uint8(model.sample(4, labels=sneaker, generator=IndexedNoise.range(3, 0, 4), **settings))
    for i, path in enumerate(files):
        np.testing.assert_array_equal(pixels(path), expected[i, 0].numpy(), err_msg=path.name)


def test_gan_samples_record_no_sampler(runs):
    root, _, results = runs
    result = results["gan"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["sampler"] is None
    assert "ddim" not in (result.stdout + result.stderr).lower()
    assert "genbench:sampler" not in read_png_text(pngs(root / "gan_out")[0])


def test_evaluate_scores_samples_own_output(runs):
    """The grid no longer sits among the samples, so the folder scores as it is."""
    root, _, results = runs
    result = results["score_own_output"]
    assert result.returncode == 0, result.stderr[-3000:]
    written = [line.removeprefix("wrote ") for line in result.stdout.splitlines() if line.startswith("wrote ")]
    record = json.loads(Path(written[0]).read_text())  # evaluate prints a summary; the record is in its file
    assert record["n_fake"] == N and record["extractor"] == "fmnist_classifier"


def test_unknown_prompt_lists_the_valid_classes(runs):
    root, _, results = runs
    line = assert_contract_error(results["foo"], "Foo", "Sneaker", "Ankle boot", "T-shirt/top")
    assert not (root / "foo").exists(), line


@pytest.mark.parametrize("case", BAD)
def test_bad_input_fails_before_sampling_and_leaves_nothing(runs, case):
    root, _, results = runs
    assert_contract_error(results[case], *BAD[case][1])
    assert not (root / "bad").exists() and not (root / "bad_grid.png").exists()
    assert (root / "a_file.txt").read_text() == "not a folder\n"
    assert len(pngs(root / "plain")) == N  # the earlier output stays as it was


def test_image_prompts_give_one_output_per_image_recording_its_hash_and_strength(runs):
    root, _, results = runs
    result = results["prompt_gan"]
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 3 and summary["strength"] == 0.5 and summary["inversion"]["steps"] == 3
    assert 0 < summary["reconstruction_rmse"] < 1
    sneaker = CLASS_NAMES.index("Sneaker")
    for i, path in enumerate(pngs(root / "prompt_gan")):
        text = read_png_text(path)
        assert text["genbench:prompt_image"] == f"p{i}.png" and text["genbench:strength"] == "0.5", text
        assert text["genbench:prompt_image_sha256"] == file_sha256(root / "prompts" / f"p{i}.png"), text
        assert text["genbench:label"] == str(sneaker) and float(text["genbench:reconstruction_rmse"]) > 0


def test_an_image_prompt_of_another_size_and_channels_is_converted_as_the_data_is(runs):
    from genbench.prompts import read_prompt_images

    root, ckpt, results = runs
    assert results["prompt_rgb"].returncode == 0, results["prompt_rgb"].stderr[-3000:]
    model, _ = load_checkpoint(ckpt)
    prompt = read_prompt_images(root / "photo.jpg", model.image_shape)
    assert prompt.pixels.shape == (1, 1, 28, 28) and prompt.converted == ("30x40 to 28x28", "RGB to grey")
    expected = model.from_images(prompt.as_model_input().expand(2, -1, -1, -1), 0.5, generator=IndexedNoise.range(0, 0, 2),
                                 sampler="ddim", steps=4).images  # fmt: skip
    files = pngs(root / "prompt_rgb")
    assert len(files) == 2  # n=2 variations of the one image, each with its own noise
    for i, path in enumerate(files):
        np.testing.assert_array_equal(pixels(path), to_uint8(expected)[i, 0].numpy(), err_msg=path.name)
    assert not np.array_equal(pixels(files[0]), pixels(files[1]))
