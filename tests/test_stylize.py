"""``python -m genbench.stylize``: the losses do what Gatys et al. ask of them, the result is reproducible, every
network, channel count and odd size works, and bad input is one line that writes nothing."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import CONF_DIR, assert_contract_error, run_cli_batch
from genbench.style.features import build_network
from genbench.style.images import read_photo
from genbench.style.transfer import Objective, Settings, layout_distance, transfer

# Recognisable content: the result's layout distance to the content photo (genbench.style.transfer.layout_distance
# on the random network's scale1 maps, i.e. edges and details: 0 the same layout, 2 unrelated) stays below this bound,
# about a correlation of 0.5 per map; the style image's distance is above 1.5.
LAYOUT_BOUND = 1.0


def scene(width: int, height: int) -> np.ndarray:
    """A content picture: a bright disc and a dark bar on a shaded background, uint8 (H, W, 3)."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    image = np.stack([0.3 + 0.4 * x / width, 0.4 + 0.0 * x, 0.7 - 0.4 * y / height], axis=-1)
    disc = (x - 0.35 * width) ** 2 + (y - 0.4 * height) ** 2 < (0.22 * min(width, height)) ** 2
    image[disc] = (0.95, 0.9, 0.8)
    image[int(0.7 * height) : int(0.8 * height), int(0.5 * width) : int(0.9 * width)] = (0.1, 0.1, 0.15)
    return (image * 255).round().astype(np.uint8)


def stripes(width: int, height: int) -> np.ndarray:
    """A style picture: orange and teal diagonal stripes, 6 px wide, uint8 (H, W, 3)."""
    y, x = np.mgrid[:height, :width]
    orange = ((x + y) // 6) % 2 == 0
    return np.where(orange[..., None], np.array([230, 120, 30]), np.array([20, 120, 130])).astype(np.uint8)


def pixels(array: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(array).float() / 255
    return (t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]).contiguous()


def settings(**changes) -> Settings:
    base = dict(steps=20, optimizer="lbfgs", lr=0.02, content_weight=1.0, style_weight=100.0, tv_weight=0.0,
                init="content")  # fmt: skip
    return Settings(**{**base, **changes})


@pytest.fixture(scope="module")
def random_net():
    return build_network("random", None, torch.device("cpu"))


def test_style_loss_falls_while_the_content_stays_recognisable(random_net):
    from matplotlib import cbook

    photo = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)  # matplotlib's sample photo, 512x600
    content, style = read_photo(photo, "content", max_side=150).pixels, pixels(stripes(128, 128))
    objective = Objective(random_net, content, style, random_net.content_layers, random_net.style_layers,
                          settings(steps=10))  # fmt: skip
    image, losses, steps = transfer(objective, content, torch.Generator().manual_seed(0))
    assert steps == 10 and image.shape == content.shape and 0 <= image.min() and image.max() <= 1
    assert losses.style[-1] < 0.05 * losses.style[0], losses.style
    assert float((image - content).abs().mean()) > 0.03  # it did change: this is not the content image back
    layer = "scale1"
    target = random_net(content, [layer])[layer]
    style_at_content_size = F.interpolate(style, size=content.shape[-2:], mode="bilinear", antialias=True)
    result_distance = layout_distance(random_net(image, [layer])[layer], target)
    style_distance = layout_distance(random_net(style_at_content_size, [layer])[layer], target)
    assert result_distance < LAYOUT_BOUND and style_distance > 1.5, (result_distance, style_distance)


def test_same_seed_same_image_and_noise_start_follows_the_seed(random_net):
    content, style = pixels(scene(128, 128)), pixels(stripes(128, 128))
    runs = {}
    for name, seed, optimizer in (("a", 1, "adam"), ("b", 1, "adam"), ("c", 2, "adam"), ("d", 1, "lbfgs"),
                                  ("e", 1, "lbfgs")):  # fmt: skip
        objective = Objective(random_net, content, style, random_net.content_layers, random_net.style_layers,
                              settings(steps=2, optimizer=optimizer, init="noise"))  # fmt: skip
        runs[name] = transfer(objective, content, torch.Generator().manual_seed(seed))[0]
    assert torch.equal(runs["a"], runs["b"]) and torch.equal(runs["d"], runs["e"])
    assert not torch.equal(runs["a"], runs["c"])
    # the random network is the same one in every process and on every machine: its filters come from a fixed seed
    # on torch's CPU generator (the hash changes only if torch changes that generator, and with it every result)
    assert torch.equal(build_network("random", None, torch.device("cpu")).weight, random_net.weight)
    assert random_net.weights_sha256 == "afe7c117479ceb7db27b379f63ae78f71712c69e721c031374cfb978269ec04b"


def compose_stylize(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None, job_name="test"):
        return compose("stylize", overrides=list(overrides))


def save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def vgg19_weights(path: Path) -> Path:
    """A randomly initialised VGG-19 feature stack, saved with torchvision's key names (the classifier is unused)."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("stylize")
    rgb = save(root / "content_rgb.png", scene(131, 149))
    grey = save(root / "content_grey.jpg", scene(137, 129)[..., 0])
    style_rgb = save(root / "style_rgb.png", stripes(140, 133))
    style_grey = save(root / "style_grey.png", stripes(129, 130)[..., 1])
    small = save(root / "small.png", stripes(150, 100))
    tiny_grey = save(root / "tiny.png", scene(28, 28)[..., 1])
    tiny_style = save(root / "tiny_style.png", stripes(28, 28)[..., 0])
    vgg_content, vgg_style = save(root / "vgg_c.png", scene(64, 70)), save(root / "vgg_s.png", stripes(66, 64))
    wide = save(root / "content_16bit.png", (scene(128, 133)[..., 0].astype(np.uint16) * 257))  # 16-bit grey
    (root / "zero_bytes.png").write_bytes(b"")
    (root / "garbage.png").write_bytes(b"not an image at all")
    (root / "a_folder.png").mkdir()
    (root / "a_file").write_text("x")
    vgg = vgg19_weights(root / "vgg19.pth")
    torch.save({"features.0.weight": torch.zeros(3)}, root / "vgg19_partial.pth")
    both = [f"content={rgb}", f"style={style_rgb}"]
    run = ["steps=2"]
    # As a user types them: one result and two refusals (Hydra's start costs about a second per command here) ...
    cli_jobs = {
        "rgb_content_grey_style": [f"content={rgb}", f"style={style_grey}", *run, f"out={root / 'rgb.png'}"],
        "style_too_small": [f"content={rgb}", f"style={small}", f"out={root / 'e4.png'}"],
        "zero_steps": [*both, "steps=0", f"out={root / 'e5.png'}"],
    }  # fmt: skip
    # ... and the rest as functions: the same checks, and the line the entry point prints for them
    # (genbench.errors.user_error_message).
    in_process = {
        "grey_content_rgb_style": [f"content={grey}", f"style={style_rgb}", *run, "optimizer=adam",
                                   f"out={root / 'grey.png'}"],
        "vgg19_local_file": [f"content={vgg_content}", f"style={vgg_style}", "network=vgg19", f"weights={vgg}",
                             *run, f"out={root / 'vgg.png'}"],
        "fmnist_28px": [f"content={tiny_grey}", f"style={tiny_style}", "network=fmnist_classifier", *run,
                        f"out={root / 'fmnist.png'}"],
        "grey_16bit_content": [f"content={wide}", f"style={style_rgb}", *run, f"out={root / 'grey16.png'}"],
        "missing_content": [f"content={root / 'nope.png'}", f"style={style_rgb}", f"out={root / 'e1.png'}"],
        "empty_style": [f"content={rgb}", f"style={root / 'zero_bytes.png'}", f"out={root / 'e2.png'}"],
        "unreadable_content": [f"content={root / 'garbage.png'}", f"style={style_rgb}", f"out={root / 'e3.png'}"],
        "negative_style_weight": [*both, "style_weight=-1.0", f"out={root / 'e6.png'}"],
        "zero_content_weight": [*both, "content_weight=0.0", f"out={root / 'e7.png'}"],
        "out_is_a_folder": [*both, f"out={root / 'a_folder.png'}"],
        "out_not_writable": [*both, f"out={root / 'a_file' / 'e8.png'}"],
        "out_not_png": [*both, f"out={root / 'e9.jpg'}"],
        "vgg19_without_weights": [*both, "network=vgg19", f"out={root / 'e10.png'}"],
        "vgg19_missing_file": [*both, "network=vgg19", f"weights={root / 'nope.pth'}", f"out={root / 'e11.png'}"],
        "vgg19_bad_file": [*both, "network=vgg19", f"weights={root / 'garbage.png'}", f"out={root / 'e12.png'}"],
        "vgg19_partial_file": [*both, "network=vgg19", f"weights={root / 'vgg19_partial.pth'}",
                               f"out={root / 'e13.png'}"],
        "random_with_weights": [*both, f"weights={vgg}", f"out={root / 'e14.png'}"],
        "unknown_layer": [*both, "style_layers=[scale0,scale9]", f"out={root / 'e15.png'}"],
        "lr_for_lbfgs": [*both, "lr=0.1", f"out={root / 'e16.png'}"],
    }  # fmt: skip
    results = {name: run_in_process(args) for name, args in in_process.items()}
    results.update(run_cli_batch({name: ("stylize", args) for name, args in cli_jobs.items()}, root / "logs"))
    return root, results


def run_in_process(args: list[str]) -> subprocess.CompletedProcess:
    """``stylize`` called as a function, its outcome as the command line would report it."""
    from genbench.errors import user_error_message
    from genbench.stylize import stylize

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):  # the progress bar's console writes to sys.stderr
            stylize(compose_stylize(*args))
    except Exception as exc:  # noqa: BLE001 - what the entry point does with it decides the outcome
        message = user_error_message(exc)
        if message is None:
            raise
        return subprocess.CompletedProcess(args, 2, "", f"genbench: error: {message}\n")
    return subprocess.CompletedProcess(args, 0, "", stderr.getvalue())


@pytest.mark.parametrize("name, mode, size", [("rgb", "RGB", (131, 149)), ("grey", "L", (137, 129)),
                                              ("grey16", "L", (128, 133)), ("fmnist", "L", (28, 28)),
                                              ("vgg", "RGB", (64, 70))])  # fmt: skip
def test_any_size_grey_or_rgb_and_every_network(cli, name, mode, size):
    root, results = cli
    job = {"rgb": "rgb_content_grey_style", "grey": "grey_content_rgb_style", "grey16": "grey_16bit_content",
           "fmnist": "fmnist_28px", "vgg": "vgg19_local_file"}[name]  # fmt: skip
    assert results[job].returncode == 0, results[job].stderr[-3000:]
    assert "2/2" in results[job].stderr  # the progress bar ends at its total
    with Image.open(root / f"{name}.png") as im:
        assert (im.mode, im.size) == (mode, size)
        text = dict(im.text)
    assert text["AI-generated"] == "true" and text["genbench:family"] == "style_transfer"
    assert len(text["genbench:content_sha256"]) == 64 and len(text["genbench:style_sha256"]) == 64
    assert '"steps": 2' in text["genbench:settings"]
    assert not list(root.glob(".*.tmp"))


ERRORS = {
    "missing_content": ["content=", "no such file"],
    "empty_style": ["style=", "empty file"],
    "unreadable_content": ["content=", "not a readable image"],
    "style_too_small": ["style image is too small", "150x100", "at least 128 px"],
    "zero_steps": ["steps=0"],
    "negative_style_weight": ["style_weight=-1.0"],
    "zero_content_weight": ["content_weight=0.0"],
    "out_is_a_folder": ["a_folder.png", "is a folder"],
    "out_not_writable": ["a_file", "not a folder"],
    "out_not_png": ["e9.jpg", ".png"],
    "vgg19_without_weights": ["network=vgg19 needs weights=PATH"],
    "vgg19_missing_file": ["nope.pth", "no such file"],
    "vgg19_bad_file": ["garbage.png", "not a torch state_dict"],
    "vgg19_partial_file": ["vgg19_partial.pth", "lacks"],
    "random_with_weights": ["network=random has no weights"],
    "unknown_layer": ["scale9", "scale5"],
    "lr_for_lbfgs": ["lr=0.1", "optimizer=adam"],
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_one_line_and_writes_nothing(cli, case):
    root, results = cli
    assert_contract_error(results[case], *ERRORS[case])
    assert not list(root.glob("e*.png")) and not list(root.glob(".*.tmp"))


def test_16bit_grey_reads_as_its_high_byte(cli):
    root, _ = cli
    assert torch.equal(read_photo(root / "content_16bit.png", "content", None).pixels, pixels(scene(128, 133)[..., 0]))
