"""``python -m genbench.sample ckpt=PATH n=INT out=DIR``: PNG samples and a grid from any family's checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from genbench.cli import hydra_entry
from genbench.errors import GenbenchError
from genbench.imageio import make_grid, provenance_chunks, save_png, to_uint8
from genbench.models import load_checkpoint

log = logging.getLogger("genbench.sample")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenbenchError("device=cuda but no CUDA GPU is visible; use device=cpu or auto")
    return torch.device(name)


def labels_for(model, prompt: str | None, labels, n: int) -> torch.Tensor | None:
    """Class ids from a class name (``prompt``) or ids; unknown names list the valid ones."""
    if prompt is not None and labels is not None:
        raise GenbenchError("give prompt=CLASS_NAME or labels=…, not both")
    if prompt is None and labels is None:
        return None
    if model.num_classes is None:
        raise GenbenchError(f"this {model.family} checkpoint is unconditional; it takes no prompt or labels")
    if prompt is not None:
        names = model.class_names or []
        lookup = {name.lower(): i for i, name in enumerate(names)}
        if str(prompt).lower() not in lookup:
            raise GenbenchError(f"unknown class '{prompt}'; valid classes: {', '.join(names)}")
        return torch.full((n,), lookup[str(prompt).lower()], dtype=torch.long)
    ids = torch.as_tensor(list(labels) if not isinstance(labels, int) else [labels], dtype=torch.long)
    return ids.expand(n) if ids.numel() == 1 else ids


def sample(cfg: DictConfig) -> Path:
    if int(cfg.n) < 1:
        raise GenbenchError(f"n={cfg.n}; expected a positive number of images")
    device = pick_device(cfg.device)
    model, run_cfg = load_checkpoint(cfg.ckpt, map_location=device)
    labels = labels_for(model, cfg.prompt, cfg.labels, int(cfg.n))
    if labels is not None and labels.numel() != int(cfg.n):
        raise GenbenchError(f"got {labels.numel()} labels for n={cfg.n} images")
    sampler = dict(sampler=cfg.sampler.name, steps=cfg.sampler.steps, eta=cfg.sampler.eta,
                   guidance_scale=cfg.sampler.guidance_scale)  # fmt: skip
    log.info("%s checkpoint %s (sha256 %s…), %d images, sampler %s", model.family, cfg.ckpt,
             model.checkpoint_sha256[:12], cfg.n, sampler if model.family == "diffusion" else "n/a")  # fmt: skip
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    batches = []
    for start in range(0, int(cfg.n), int(cfg.batch_size)):
        size = min(int(cfg.batch_size), int(cfg.n) - start)
        part = None if labels is None else labels[start : start + size]
        batches.append(to_uint8(model.sample(size, labels=part, generator=generator, progress=True, **sampler)))
    images = torch.cat(batches)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"sampler": sampler["sampler"], "sampler_steps": sampler["steps"]} if model.family == "diffusion" else {}
    for i, image in enumerate(images):
        chunks = provenance_chunks(model.family, model.checkpoint_sha256, int(cfg.seed), index=i,
                                   label="" if labels is None else int(labels[i]), **extra)  # fmt: skip
        save_png(out / f"sample_{i:05d}.png", image, chunks)
    nrow = cfg.nrow or (model.num_classes if labels is None and model.num_classes else 8)
    grid_chunks = provenance_chunks(model.family, model.checkpoint_sha256, int(cfg.seed), **extra)
    # The grid is not named sample_*.png so that `evaluate samples=DIR` can skip it.
    save_png(out / "grid.png", make_grid(images, nrow=int(nrow)), grid_chunks)
    print(json.dumps({"out": str(out), "n": int(cfg.n), "family": model.family, "grid": str(out / "grid.png")}))
    return out


main = hydra_entry(sample, config_name="sample")

if __name__ == "__main__":
    main()
