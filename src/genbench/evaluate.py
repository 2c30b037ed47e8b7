"""Score a checkpoint or a set of images with the one evaluator.

    python -m genbench.evaluate ckpt=RUN/checkpoints/last.ckpt [sampler=ddpm] [metrics.n_samples=N]
    python -m genbench.evaluate samples=FOLDER_OR_NPZ [data=fashion_mnist | reference=FOLDER_OR_NPZ]

Prints one JSON object (the ``metrics.json`` record) on stdout and writes it atomically to RUN/metrics.json,
FOLDER/metrics.json or X.metrics.json (``out=PATH`` overrides). Logs and progress go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genbench.cli import hydra_entry
from genbench.errors import GenbenchError
from genbench.metrics import evaluate_images, evaluate_model, images_from_datamodule, images_from_path

log = logging.getLogger("genbench.evaluate")


def _datamodule(data_cfg: DictConfig):
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def _data_overrides() -> DictConfig:
    """``data.*`` overrides given on this command line, to apply on top of a checkpoint's own data config."""
    try:
        task = HydraConfig.get().overrides.task
    except ValueError:  # not under Hydra
        return OmegaConf.create({})
    dotlist = [o.lstrip("+~") for o in task if o.lstrip("+~").startswith("data.")]
    return OmegaConf.from_dotlist(dotlist).get("data", OmegaConf.create({}))


def from_checkpoint(cfg: DictConfig) -> tuple[dict, Path]:
    from genbench.models import load_checkpoint

    ckpt = Path(cfg.ckpt).expanduser().resolve()
    model, run_cfg = load_checkpoint(ckpt, map_location="cpu")
    data_cfg = OmegaConf.merge(run_cfg.data, _data_overrides())  # the data the model was trained on
    log.info("checkpoint %s: %s model, data %s", ckpt, model.family, data_cfg.get("source"))
    record = evaluate_model(model, cfg.metrics, _datamodule(data_cfg), cfg.sampler)
    record.update(ckpt=str(ckpt), checkpoint_sha256=getattr(model, "checkpoint_sha256", None))
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return record, run_dir / "metrics.json"


def from_samples(cfg: DictConfig) -> tuple[dict, Path]:
    from genbench.imageio import load_images

    samples = Path(cfg.samples).expanduser().resolve()
    fake = load_images(samples)
    n = int(cfg.metrics.n_samples)
    if len(fake) > n:
        log.info("scoring the first %d of %d images in %s (metrics.n_samples)", n, len(fake), samples)
        fake = fake[:n]
    elif len(fake) < n:
        log.warning("%s holds %d images, fewer than metrics.n_samples=%d: scoring all of them", samples, len(fake), n)
    if cfg.reference is not None:
        # No training set is known for bare images, so memorization stays null.
        record = evaluate_images(fake, images_from_path(cfg.reference), cfg.metrics)
    else:
        datamodule = _datamodule(cfg.data)
        m = cfg.metrics
        record = evaluate_images(
            fake,
            images_from_datamodule(datamodule, m.reference_split, m.n_reference),
            m,
            train=images_from_datamodule(datamodule, "train"),
            heldout=images_from_datamodule(datamodule, m.heldout_split),
        )
    record["samples"] = str(samples)
    out = samples / "metrics.json" if samples.is_dir() else samples.with_name(samples.stem + ".metrics.json")
    return record, out


def write_json(path: Path, record: dict) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def evaluate(cfg: DictConfig) -> dict:
    if (cfg.ckpt is None) == (cfg.samples is None):
        raise GenbenchError("give exactly one of ckpt=PATH (a checkpoint) or samples=PATH (a folder of PNGs or an .npz)")
    if cfg.reference is not None and cfg.ckpt is not None:
        raise GenbenchError("reference=PATH goes with samples=PATH; a checkpoint is scored against its own data")
    record, out = from_checkpoint(cfg) if cfg.ckpt is not None else from_samples(cfg)
    out = Path(cfg.out).expanduser() if cfg.out is not None else out
    write_json(out, record)
    log.info("wrote %s", out)
    print(json.dumps(record), flush=True)
    return record


main = hydra_entry(evaluate, "eval")

if __name__ == "__main__":
    main()
