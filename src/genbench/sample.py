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
from omegaconf import DictConfig, OmegaConf

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
    from genbench.metrics.settings import given, sampler_for_run
    from genbench.models import load_checkpoint

    check_config(cfg, "sample")  # every key's type and range (genbench.schema), before anything is loaded
    batch_size, seed, nrow = cfg.batch_size, cfg.seed, cfg.nrow
    if cfg.image is None and (given("strength") or given("inversion")):
        raise GenbenchError(f"{' '.join(given('strength') + given('inversion'))} applies to image prompts: give "
                            "image=PATH_OR_FOLDER too")  # fmt: skip
    out = Path(cfg.out).expanduser()
    check_out(out)
    check_writable(out.parent)  # a read-only or misplaced out= fails before the checkpoint loads
    device = pick_device(cfg.device)
    model, run_cfg = load_checkpoint(cfg.ckpt, map_location=device)
    prompts = None if cfg.image is None else read_prompts(model, cfg, run_cfg)
    n = cfg.n or (64 if prompts is None else len(prompts.names))
    labels = labels_for(model, cfg.prompt, cfg.labels, n)
    settings = sampler_for_run(model, run_cfg.get("sampler"), cfg.sampler)
    batch_size = fastest_sampling_batch(device, settings) if batch_size == "auto" else batch_size
    log.info("%s checkpoint %s (sha256 %s…), %d images, sampler %s", model.family, cfg.ckpt,
             model.checkpoint_sha256[:12], n, settings or "none (one pass)")  # fmt: skip
    batches, records = [], []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        part = None if labels is None else labels[start : start + size]
        noise = IndexedNoise.range(seed, start, size, device)
        if prompts is None:
            images = model.sample(size, labels=part, generator=noise, progress=True, **(settings or {}))
        else:
            result = prompt_batch(model, cfg, prompts, start, size, part, noise, settings)
            images = result.images
            records.append(result)
        check_finite(images, f"the {model.family} model's samples {start}-{start + size - 1}")
        batches.append(to_uint8(images))
    images = torch.cat(batches)
    check_not_constant(images, f"the {model.family} model's {n} samples")  # before anything is written

    extra = {} if settings is None else {"sampler": settings["sampler"], "sampler_steps": settings["steps"]}
    per_image = [{} for _ in range(n)] if prompts is None else prompt_provenance(cfg, prompts, records, n)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out) as tmp:  # onto a new or empty folder: all samples appear at once, or none
        for i, image in enumerate(images):
            chunks = provenance_chunks(model.family, model.checkpoint_sha256, seed, index=i,
                                       label="" if labels is None else int(labels[i]), **extra, **per_image[i])  # fmt: skip
            save_png(tmp / f"sample_{i:05d}.png", image, chunks, atomic=False)
    nrow = nrow or (model.num_classes if labels is None and model.num_classes and prompts is None else 8)
    grid = grid_path(out)
    save_png(grid, make_grid(images, nrow=nrow), provenance_chunks(model.family, model.checkpoint_sha256, seed, **extra))
    summary = {"out": str(out), "n": n, "family": model.family, "grid": str(grid), "sampler": settings}
    if prompts is not None:
        summary |= prompt_summary(cfg, records)
    print(json.dumps(summary, ensure_ascii=False))  # a path as the user typed it, not \u escapes
    return out


# ---------------------------------------------------------------- image prompts --------------------------------------


def strength(cfg: DictConfig) -> float:
    """``strength=``, or halfway (0.5) when an image prompt leaves it out."""
    return 0.5 if cfg.strength is None else float(cfg.strength)


def read_prompts(model, cfg: DictConfig, run_cfg: DictConfig):
    """The prompt images at the model's shape, after checking the model can take them (before any work)."""
    from genbench.prompts import read_prompt_images

    refusal = model.image_prompt_refusal()
    if refusal:
        raise GenbenchError(refusal)
    resize = OmegaConf.select(run_cfg, "data.resize", default="auto")
    prompts = read_prompt_images(cfg.image, model.image_shape, resize)
    for change in prompts.converted:
        log.info("image prompts converted as the data module converts: %s", change)
    return prompts


def prompt_batch(model, cfg: DictConfig, prompts, start: int, size: int, labels, noise, settings):
    """Outputs ``start`` to ``start + size - 1``: output i follows prompt image i mod the number of images."""
    index = torch.arange(start, start + size) % len(prompts.names)
    extra = {"inversion": dict(cfg.inversion)} if model.inverts_images else {}
    return model.from_images(prompts.as_model_input()[index], strength(cfg), labels=labels, generator=noise,
                             progress=True, **(settings or {}), **extra)  # fmt: skip


def prompt_provenance(cfg: DictConfig, prompts, records, n: int) -> list[dict]:
    """Per output: its prompt image's name and sha256, the strength and what the model's reconstruction missed."""
    errors = torch.cat([r.reconstruction_rmse.cpu() for r in records])
    count = len(prompts.names)
    return [{"prompt_image": prompts.names[i % count], "prompt_image_sha256": prompts.sha256[i % count],
             "strength": strength(cfg), "reconstruction_rmse": f"{float(errors[i]):.5f}"} for i in range(n)]  # fmt: skip


def prompt_summary(cfg: DictConfig, records) -> dict:
    errors = torch.cat([r.reconstruction_rmse.cpu() for r in records])
    summary = {"image": str(cfg.image), "strength": strength(cfg),
               "reconstruction_rmse": round(float(errors.mean()), 5)}  # fmt: skip
    record = {k: v for k, v in records[0].record.items() if k not in ("inversion_loss", "image_classes", "nfe")}
    if "inversion_loss" in records[0].record:
        losses = [x for r in records for x in r.record["inversion_loss"]]
        record["inversion_loss"] = round(sum(losses) / len(losses), 5)
    return summary | record


main = hydra_entry(sample, config_name="sample")

if __name__ == "__main__":
    main()
