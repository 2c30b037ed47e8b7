"""The families behind one interface, which families there are, and how to build or load any of them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from genbench.errors import GenbenchError
from genbench.models.base import Diverged, GenerativeModule

__all__ = ["Diverged", "GenerativeModule", "build_model", "families", "family_class", "load_checkpoint", "file_sha256"]


def families() -> list[str]:
    """Every family genbench trains, sorted: the names of ``conf/model/*.yaml`` (``model=NAME``) in the config folder
    the commands read (``genbench.cli.CONF_DIR``). The Makefile, the bench, the tests and the report take this list;
    adding a family is adding its config."""
    from genbench.cli import CONF_DIR

    return sorted(path.stem for path in (Path(CONF_DIR) / "model").glob("*.yaml"))


def family_class(family: str, target: str | None = None) -> type[GenerativeModule]:
    """The module class of ``family``: ``target`` (a run's ``model._target_``) when given, else the one its
    ``conf/model/FAMILY.yaml`` names. Its class attributes say what the family can do without building a model."""
    from hydra.utils import get_class

    from genbench.cli import CONF_DIR

    if target is None:
        conf = Path(CONF_DIR) / "model" / f"{family}.yaml"
        if not conf.is_file():
            raise GenbenchError(f"no family {family!r} (expected one of {', '.join(families())})")
        target = OmegaConf.load(conf).get("_target_")
    try:
        cls = get_class(str(target))
    except Exception as exc:  # noqa: BLE001 - hydra wraps import and attribute errors alike
        raise GenbenchError(f"family {family}: _target_ {target} cannot be imported ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, GenerativeModule)):
        raise GenbenchError(f"family {family}: _target_ {target} is not a genbench GenerativeModule")
    return cls


def build_model(model_cfg: DictConfig, image_shape, num_classes: int | None, class_names) -> GenerativeModule:
    """Instantiate ``model=…`` for data of this shape and these classes (taken from the data module)."""
    if "compile" in model_cfg:  # runs before hardware.compile kept it here; it only said how fast, so it goes
        model_cfg = OmegaConf.masked_copy(model_cfg, [k for k in model_cfg if k != "compile"])
    model = instantiate(model_cfg, image_shape=list(image_shape), num_classes=num_classes, class_names=class_names)
    if not isinstance(model, GenerativeModule):
        raise GenbenchError(f"model._target_ {model_cfg._target_} is not a genbench GenerativeModule")
    return model


def migrated_config(cfg: DictConfig) -> DictConfig:
    """A checkpoint's config in today's names: the iterative core's ``model.path`` was ``model.schedule`` before it
    served paths other than DDPM's (the same object, the same weights, the same images)."""
    model = cfg.get("model")
    if model is not None and "schedule" in model and "path" not in model:
        with open_dict(cfg):
            model["path"] = model.pop("schedule")
    return cfg


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
    cfg = migrated_config(OmegaConf.create(meta["config"]))
    data = meta["data"]
    model = build_model(cfg.model, data["image_shape"], data["num_classes"], data["class_names"])
    model.load_state_dict(checkpoint["state_dict"])
    model.run_meta = meta
    model.checkpoint_sha256 = file_sha256(path)
    model.images_seen = int(checkpoint.get("genbench_images_seen", 0))
    return model.to(map_location).eval(), cfg
