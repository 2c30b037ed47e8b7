"""``python -m genbench.stylize content=IMG style=IMG out=IMG.png``: neural style transfer (Gatys et al. 2016).

The result keeps the content image's layout (its features on the content layers) and takes the style image's
texture statistics (Gram matrices on the style layers); genbench/style/transfer.py has the objective. The feature
network is ``network=``: by default random filters that need no download (genbench/style/features.py). Every
check (settings, paths, images, sizes, weights) runs before the optimisation; the PNG appears whole at the end,
with text chunks that say it is AI-generated, by which network, from which two files (sha256) and settings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from genbench.cli import hydra_entry
from genbench.devices import pick_device
from genbench.errors import GenbenchError
from genbench.files import check_writable
from genbench.imageio import provenance_chunks, save_png
from genbench.schema import check_config

log = logging.getLogger("genbench.stylize")
ADAM_LR = 0.02  # pixels in [0, 1]: about 5 grey levels per step


def check_out(out: Path, *inputs: Path) -> None:
    if out.suffix.lower() != ".png":
        raise GenbenchError(f"out={out}; expected a .png file (the provenance is stored in PNG text chunks)")
    if out.is_dir():
        raise GenbenchError(f"out={out} is a folder; expected a .png file path")
    for path in inputs:
        if path.exists() and out.exists() and out.resolve() == path.resolve():
            raise GenbenchError(f"out={out} is an input image; choose another path for the result")
    check_writable(out.parent)


def check_sizes(photos: dict, min_side: int, network: str) -> None:
    for key, photo in photos.items():
        width, height = photo.size
        if min(width, height) < min_side:
            shrunk = "" if photo.size == photo.original_size else " (shrunk from {}x{} by max_side)".format(
                *photo.original_size)
            raise GenbenchError(f"{key} image is too small for network={network}: {width}x{height} px{shrunk}; its "
                                f"shorter side must be at least {min_side} px")  # fmt: skip


def match_channels(style: torch.Tensor, channels: int) -> torch.Tensor:
    """The style image in the result's channels (the content's): a grey result matches the style's luma."""
    from genbench.style.features import LUMA

    if style.shape[1] == channels:
        return style
    if channels == 3:
        return style.expand(-1, 3, -1, -1)
    return (style * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def stylize(cfg: DictConfig) -> Path:
    from genbench.style.features import build_network
    from genbench.style.images import read_photo, to_uint8
    from genbench.style.transfer import Objective, Settings, progress_bar, transfer

    values = check_config(cfg, "stylize")  # every key's type and range (genbench.schema), before anything is read
    content_path, style_path = Path(cfg.content).expanduser(), Path(cfg.style).expanduser()
    out = Path(cfg.out).expanduser()
    check_out(out, content_path, style_path)
    if cfg.optimizer == "lbfgs" and cfg.lr is not None:
        raise GenbenchError(f"lr={cfg.lr}: optimizer=lbfgs finds its step by line search; lr is for optimizer=adam")
    device = pick_device(cfg.device)
    photos = {"content": read_photo(content_path, "content", cfg.max_side),
              "style": read_photo(style_path, "style", cfg.max_side)}  # fmt: skip
    net = build_network(cfg.network, cfg.weights, device)
    content_layers = net.check_layers(values["content_layers"] or net.content_layers, "content_layers")
    style_layers = net.check_layers(values["style_layers"] or net.style_layers, "style_layers")
    min_side = net.min_side(content_layers + style_layers)
    if cfg.max_side is not None and cfg.max_side < min_side:
        raise GenbenchError(f"max_side={cfg.max_side} is below network={cfg.network}'s minimum image side, {min_side} px")
    check_sizes(photos, min_side, cfg.network)

    settings = Settings(steps=cfg.steps, optimizer=cfg.optimizer, lr=cfg.lr or ADAM_LR, init=cfg.init,
                        content_weight=cfg.content_weight, style_weight=cfg.style_weight, tv_weight=cfg.tv_weight)  # fmt: skip
    content = photos["content"].pixels.to(device)
    style = match_channels(photos["style"].pixels, content.shape[1]).to(device)
    log.info("network %s (weights sha256 %s…), content %s %dx%d, style %s %dx%d, %d %s steps", net.name,
             net.weights_sha256[:12], content_path, *photos["content"].size, style_path, *photos["style"].size,
             cfg.steps, cfg.optimizer)  # fmt: skip
    started = time.perf_counter()
    objective = Objective(net, content, style, content_layers, style_layers, settings)
    with progress_bar(cfg.steps, f"stylize ({cfg.optimizer})") as advance:
        image, losses, steps_done = transfer(objective, content, torch.Generator().manual_seed(cfg.seed), advance)
    if not torch.isfinite(image).all():
        raise GenbenchError("the optimisation diverged (NaN or inf pixels); nothing was written. Lower lr or "
                            "the weights")  # fmt: skip
    seconds = time.perf_counter() - started

    record = {"network": net.name, "content_layers": list(content_layers), "style_layers": list(style_layers),
              "steps": cfg.steps, "steps_done": steps_done, "optimizer": cfg.optimizer, "lr": cfg.lr,
              "content_weight": cfg.content_weight, "style_weight": cfg.style_weight, "tv_weight": cfg.tv_weight,
              "max_side": cfg.max_side, "init": cfg.init}  # fmt: skip
    chunks = provenance_chunks("style_transfer", net.weights_sha256, cfg.seed, network=net.name,
                               content_sha256=photos["content"].sha256, style_sha256=photos["style"].sha256,
                               settings=json.dumps(record))  # fmt: skip
    save_png(out, to_uint8(image), chunks)
    first, last = 0, -1
    print(json.dumps({"out": str(out), "size": list(photos["content"].size), "seconds": round(seconds, 2),
                      **record, "content_loss": [losses.content[first], losses.content[last]],
                      "style_loss": [losses.style[first], losses.style[last]],
                      "tv_loss": [losses.tv[first], losses.tv[last]]}, ensure_ascii=False))  # fmt: skip
    return out


main = hydra_entry(stylize, config_name="stylize")

if __name__ == "__main__":
    main()
