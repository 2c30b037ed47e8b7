"""``python -m genbench.sample ckpt=PATH n=INT out=DIR``: PNG samples and a grid from any family's checkpoint.

``OUT/`` receives exactly the ``n`` samples (``sample_00000.png``, …) and the grid goes beside it, ``OUT_grid.png``:
a folder that holds only the samples is what ``evaluate samples=OUT`` and other FID tools (torch-fidelity,
clean-fid, which also read sub-folders) score, so a grid of another size must not sit among them. The samples are
written into a hidden folder first and moved to ``OUT`` when all are there, so an interrupted command leaves no
folder that could pass for a finished one. Sample i has the noise stream of ``(seed, i)``: the same image at any
``batch_size`` or device. The sampler is the run's own (its training config's ``sampler``) unless the command line
sets one; a model that takes no sampler (GAN, VAE) refuses sampler settings rather than ignoring them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from genbench.cli import hydra_entry
from genbench.devices import pick_device
from genbench.errors import GenbenchError
from genbench.files import atomic_folder, check_writable
from genbench.imageio import check_finite, check_not_constant, make_grid, provenance_chunks, save_png, to_uint8
from genbench.noise import IndexedNoise
from genbench.schema import check_config

log = logging.getLogger("genbench.sample")




def check_out(out: Path) -> None:
    """``out`` must be a new or empty folder: samples of an earlier command must not mix with these."""
    if out.exists() and not out.is_dir():
        raise GenbenchError(f"out={out} is a file; expected a folder for the PNGs (new, or empty)")
    if out.is_dir() and any(out.iterdir()):
        raise GenbenchError(f"out={out} already holds files; choose a new folder or empty it")
    if grid_path(out).is_dir():
        raise GenbenchError(f"{grid_path(out)} is a folder; the grid of out={out} goes there")


def grid_path(out: Path) -> Path:
    return out.parent / f"{out.name}_grid.png"


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
    try:
        ids = torch.as_tensor(list(labels) if not isinstance(labels, int) else [labels], dtype=torch.long)
    except (TypeError, ValueError) as exc:
        raise GenbenchError(f"labels={labels}; expected a class id or a list of ids") from exc
    ids = ids.expand(n) if ids.numel() == 1 else ids
    if ids.numel() != n:
        raise GenbenchError(f"got {ids.numel()} labels for n={n} images")
    return ids


def sample(cfg: DictConfig) -> Path:
    from genbench.metrics.config import fastest_sampling_batch
    from genbench.metrics.settings import sampler_for_run
    from genbench.models import load_checkpoint

    check_config(cfg, "sample")  # every key's type and range (genbench.schema), before anything is loaded
    n, batch_size, seed, nrow = cfg.n, cfg.batch_size, cfg.seed, cfg.nrow
    out = Path(cfg.out).expanduser()
    check_out(out)
    check_writable(out.parent)  # a read-only or misplaced out= fails before the checkpoint loads
    device = pick_device(cfg.device)
    model, run_cfg = load_checkpoint(cfg.ckpt, map_location=device)
    labels = labels_for(model, cfg.prompt, cfg.labels, n)
    settings = sampler_for_run(model, run_cfg.get("sampler"), cfg.sampler)
    batch_size = fastest_sampling_batch(device, settings) if batch_size == "auto" else batch_size
    log.info("%s checkpoint %s (sha256 %s…), %d images, sampler %s", model.family, cfg.ckpt,
             model.checkpoint_sha256[:12], n, settings or "none (one pass)")  # fmt: skip
    batches = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        part = None if labels is None else labels[start : start + size]
        noise = IndexedNoise.range(seed, start, size, device)
        images = model.sample(size, labels=part, generator=noise, progress=True, **(settings or {}))
        check_finite(images, f"the {model.family} model's samples {start}-{start + size - 1}")
        batches.append(to_uint8(images))
    images = torch.cat(batches)
    check_not_constant(images, f"the {model.family} model's {n} samples")  # before anything is written

    extra = {} if settings is None else {"sampler": settings["sampler"], "sampler_steps": settings["steps"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out) as tmp:  # onto a new or empty folder: all samples appear at once, or none
        for i, image in enumerate(images):
            chunks = provenance_chunks(model.family, model.checkpoint_sha256, seed, index=i,
                                       label="" if labels is None else int(labels[i]), **extra)  # fmt: skip
            save_png(tmp / f"sample_{i:05d}.png", image, chunks, atomic=False)
    nrow = nrow or (model.num_classes if labels is None and model.num_classes else 8)
    grid = grid_path(out)
    save_png(grid, make_grid(images, nrow=nrow), provenance_chunks(model.family, model.checkpoint_sha256, seed, **extra))
    print(json.dumps({"out": str(out), "n": n, "family": model.family, "grid": str(grid), "sampler": settings},
                     ensure_ascii=False))  # a path as the user typed it, not \u escapes
    return out


main = hydra_entry(sample, config_name="sample")

if __name__ == "__main__":
    main()
