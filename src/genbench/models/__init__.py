"""The three families behind one interface, and how to build or load any of them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genbench.errors import GenbenchError
from genbench.models.base import Diverged, GenerativeModule

__all__ = ["Diverged", "GenerativeModule", "build_model", "load_checkpoint", "file_sha256"]


def build_model(model_cfg: DictConfig, image_shape, num_classes: int | None, class_names) -> GenerativeModule:
    """Instantiate ``model=…`` for data of this shape and these classes (taken from the data module)."""
    if "compile" in model_cfg:  # runs before hardware.compile kept it here; it only said how fast, so it goes
        model_cfg = OmegaConf.masked_copy(model_cfg, [k for k in model_cfg if k != "compile"])
    model = instantiate(model_cfg, image_shape=list(image_shape), num_classes=num_classes, class_names=class_names)
    if not isinstance(model, GenerativeModule):
        raise GenbenchError(f"model._target_ {model_cfg._target_} is not a genbench GenerativeModule")
    return model


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GenerativeModule, DictConfig]:
    """A trained model in eval mode (EMA weights sample) and its run's resolved config, from any run's ckpt."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GenbenchError(f"checkpoint {path} does not exist (expected RUN_DIR/checkpoints/last.ckpt)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise GenbenchError(f"{path} is not a readable checkpoint: {type(exc).__name__}: {exc}") from exc
    meta = checkpoint.get("genbench") if isinstance(checkpoint, dict) else None
    if not meta or "state_dict" not in checkpoint:
        raise GenbenchError(f"{path} is not a genbench checkpoint (no 'genbench' record inside)")
    cfg = OmegaConf.create(meta["config"])
    data = meta["data"]
    model = build_model(cfg.model, data["image_shape"], data["num_classes"], data["class_names"])
    model.load_state_dict(checkpoint["state_dict"])
    model.run_meta = meta
    model.checkpoint_sha256 = file_sha256(path)
    model.images_seen = int(checkpoint.get("genbench_images_seen", 0))
    return model.to(map_location).eval(), cfg
