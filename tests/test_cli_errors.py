"""Bad input on the command line: one ``genbench: error:`` line on stderr, exit 2, and no run folder left behind.

The commands run in one fixture through ``run_cli_batch`` (one Lightning import for all) and each test reads its own.
Bad input given to a folder that already holds a run is tested in test_identity.py (the folder stays byte-identical).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import assert_contract_error, run_cli_batch

# name -> (entry point, arguments, words the error line must hold); {images}, {few_images} and {broken_images} are
# image folders made by the fixture.
CASES = {
    "missing_data_root": ("train", ["data.root=/nonexistent/fmnist"], ["data.root", "/nonexistent/fmnist"]),
    "unknown_model": ("train", ["model=transformer"], ["transformer", "gan", "vae", "diffusion"]),
    "negative_budget": ("train", ["budget.max_steps=-3"], ["budget.max_steps=-3", "positive"]),
    "unusable_image_size": ("train", ["data.image_size=50"], ["data.image_size=50", "28"]),
    "seed_not_an_integer": ("train", ["seed=abc"], ["seed=abc", "integer"]),
    "learning_rate_not_a_number": ("train", ["model.optimizer.lr=abc"], ["model.optimizer", "lr=abc"]),
    "log_interval_zero": ("train", ["trainer.log_every_n_steps=0"], ["trainer.log_every_n_steps=0", "positive"]),
    "negative_checkpoint_interval": ("train", ["trainer.checkpoint_every_n_steps=-1"],
                                     ["trainer.checkpoint_every_n_steps=-1", "positive"]),
    "devices_not_a_number": ("train", ["hardware.devices=abc"], ["hardware.devices=abc", "expected"]),
    "unknown_precision": ("train", ["hardware.precision=bogus"], ["hardware.precision=bogus", "32-true"]),
    "unknown_strategy": ("train", ["hardware.strategy=bogus"], ["hardware.strategy=bogus", "ddp"]),
    "unknown_trainer_argument": ("train", ["+trainer.bogus=1"], ["trainer.bogus", "Trainer"]),
    "unknown_resize_mode": ("train", ["data.resize=bogus"], ["data.resize=bogus", "auto", "pad", "resize"]),
    "batch_size_not_a_number": ("train", ["data.batch_size=abc"], ["data.batch_size=abc"]),
    "empty_subset": ("train", ["data.subset=0"], ["data.subset=0", "positive"]),
    "empty_batches": ("train", ["data.batch_size=0"], ["data.batch_size=0", "positive"]),
    "unknown_gan_loss": ("train", ["model=gan", "model.loss=bogus", "data=imagefolder", "data.root={images}"],
                         ["model.loss=bogus", "hinge", "wgan_gp"]),
    "no_discriminator_steps": ("train", ["model=gan", "model.d_steps=0", "data=imagefolder", "data.root={images}"],
                               ["model.d_steps=0"]),
    "guidance_on_a_gan": ("train", ["model=gan", "sampler.guidance_scale=3", "data=imagefolder", "data.root={images}"],
                          ["guidance_scale=3", "gan"]),
    "too_few_images": ("train", ["data=imagefolder", "data.root={few_images}"], ["3 image(s)", "at least 5"]),
    "undecodable_image": ("train", ["data=imagefolder", "data.root={broken_images}"],
                          ["broken.png", "cannot be decoded"]),
    "text_file_as_checkpoint": ("sample", [], ["not a readable checkpoint"]),
}  # fmt: skip


def image_folder(folder, n: int, broken: bool = False):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((28, 28), 20 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    if broken:
        (folder / "broken.png").write_text("not a PNG\n")
    return folder


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    fake_ckpt = root / "notes.ckpt"
    fake_ckpt.write_text("this is not a checkpoint\n")
    folders = {"images": image_folder(root / "data" / "images", 12), "few_images": image_folder(root / "data" / "few", 3),
               "broken_images": image_folder(root / "data" / "broken", 8, broken=True)}  # fmt: skip
    jobs = {}
    for name, (module, args, _) in CASES.items():
        if module == "train":
            jobs[name] = (module, [*(a.format(**folders) for a in args), f"paths.runs_dir={root / name}"])
        else:
            jobs[name] = (module, [f"ckpt={fake_ckpt}", "n=2", f"out={root / name / 'out'}"])
    return root, run_cli_batch(jobs, root / "logs")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_exit_2(outcomes, case):
    root, results = outcomes
    assert_contract_error(results[case], *CASES[case][2])
    assert "Traceback" not in results[case].stderr
    left = [p for p in (root / case).rglob("*") if p.is_file() or "-seed" in p.name] if (root / case).exists() else []
    assert left == [], f"{case} left a run folder or files behind: {left}"
