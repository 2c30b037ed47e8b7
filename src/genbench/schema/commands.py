"""Each command's whole config checked: its groups (genbench.schema.groups) and its _target_ nodes."""

from __future__ import annotations

import math
import typing
from typing import Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genbench.errors import GenbenchError
from genbench.schema import groups
from genbench.schema.check import nearest, show, validate
from genbench.schema.targets import CALLBACK_CONTEXT, SUPPLIED, check_target

COMMANDS: dict[str, type[groups.Group]] = {
    "train": groups.Run, "sample": groups.Sample, "evaluate": groups.Evaluate, "report": groups.Report,
    "stylize": groups.Stylize,
}  # fmt: skip
# Trainer arguments train.py passes itself (train.build_trainer): setting them twice would be ambiguous.
SET_BY_GENBENCH = frozenset({"accelerator", "devices", "num_nodes", "precision", "strategy", "callbacks", "logger",
                             "plugins", "default_root_dir"})  # fmt: skip
Command = Literal["train", "sample", "evaluate", "report", "stylize"]


def resolved(cfg: DictConfig | dict) -> dict:
    """The config as plain values, interpolations resolved (one that cannot be is a GenbenchError naming both keys)."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # a command run as a function: Hydra's own values (the run folder) are unset
        cfg = OmegaConf.create(_without_hydra_values(OmegaConf.to_container(cfg)))
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key, reason = getattr(exc, "full_key", None), str(exc).splitlines()[0]
        raw = OmegaConf.select(OmegaConf.create(OmegaConf.to_container(cfg)), key) if key else None
        raise GenbenchError(f"{key or 'the config'}={raw}: {reason}") from None


def _without_hydra_values(node):
    """``${hydra:...}`` interpolations replaced by a placeholder, so the rest resolves outside a Hydra run."""
    if isinstance(node, dict):
        return {k: _without_hydra_values(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_hydra_values(v) for v in node]
    return "hydra-runtime-value" if isinstance(node, str) and "${hydra:" in node else node


def check_trainer_arguments(trainer: dict) -> None:
    """Keys of ``trainer`` the schema does not list must still be Lightning Trainer arguments (it checks them)."""
    import inspect

    import pytorch_lightning as pl

    accepted = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"} - SET_BY_GENBENCH
    known = set(groups.Trainer.model_fields)
    for key, value in trainer.items():
        if key == "_target_" or key in known:
            continue
        if key in SET_BY_GENBENCH:
            raise GenbenchError(f"trainer.{key} is set by genbench from hardware.*, callbacks, logger and the run "
                                "folder; set those instead")  # fmt: skip
        if key not in accepted:
            raise GenbenchError(f"trainer.{key}: unknown key (not an argument of pytorch_lightning.Trainer)"
                                f"{nearest(key, accepted | known)}")  # fmt: skip
        if isinstance(value, float) and not math.isfinite(value):
            raise GenbenchError(f"trainer.{key}={show(value)}; expected a finite number")


def check_sampler_name(model: dict, name: str) -> None:
    """``sampler.name`` among the samplers the model's class declares (a model that takes none ignores it)."""
    from hydra.utils import get_class

    try:
        cls = get_class(str(model.get("_target_")))
    except Exception:  # noqa: BLE001 - check_target has said what is wrong with the target
        return
    names = getattr(cls, "samplers", ())
    if getattr(cls, "takes_sampler", False) and name not in names:
        raise GenbenchError(f"sampler.name={name}; expected one of {', '.join(names)}{nearest(name, set(names))}")


def check_config(cfg: DictConfig | dict, command: Command = "train") -> dict:
    """Every key of ``command``'s composed config against its rule; the plain values, or one GenbenchError."""
    values = resolved(cfg)
    validate(COMMANDS[command], values)
    if "data" in values and command in ("train", "evaluate"):
        check_target(values["data"], "data")
    if command == "train":
        check_target(values["model"], "model", SUPPLIED)
        check_sampler_name(values["model"], values["sampler"]["name"])
        check_trainer_arguments(values["trainer"])
        for name, node in values["callbacks"].items():
            if node is not None:
                check_target(node, f"callbacks.{name}", CALLBACK_CONTEXT)
        for i, node in enumerate(values["logger"]["extra"]):
            check_target(node, f"logger.extra[{i}]")
    return values





def leaves(cfg: DictConfig | dict, command: Command = "train") -> dict[str, object]:
    """Every leaf of a composed config: ``key.path`` -> its rule (a pydantic ``FieldInfo``; ``None`` where the schema
    says nothing; ``"open"`` for an argument of another library's object that takes any keyword, e.g. W&B's logger).
    For the test that keeps keys from existing without a rule. A list is one leaf: its rule covers every item."""
    from pydantic import BaseModel

    from genbench.schema.targets import target_model

    found: dict[str, object] = {}

    def node_rules(node: dict, path: str, rule: object) -> tuple[dict, bool]:
        if isinstance(rule, type) and issubclass(rule, BaseModel):
            return dict(rule.model_fields), False
        supplied = SUPPLIED if path.startswith("model") else CALLBACK_CONTEXT if path.startswith("callbacks") else frozenset()
        model, open_ended = target_model(node["_target_"], supplied)
        return dict(model.model_fields), open_ended

    def walk(values: dict, rules: dict, open_ended: bool = False, prefix: str = "") -> None:
        for key, value in values.items():
            if key in ("_target_", "_partial_"):
                continue
            path, field = f"{prefix}{key}", rules.get(key)
            rule = getattr(field, "annotation", None)
            if isinstance(value, dict) and ("_target_" in value or _is_model(rule)):
                walk(value, *node_rules(value, path, rule), prefix=f"{path}.")
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                item = next(iter(typing.get_args(rule)), None)
                for i, entry in enumerate(value):
                    walk(entry, *node_rules(entry, path, item), prefix=f"{path}[{i}].")
            elif field is not None and (field.annotation is not typing.Any or field.metadata):
                found[path] = field
            else:
                found[path] = "open" if open_ended else None

    walk(resolved(cfg), dict(COMMANDS[command].model_fields))
    return found


def _is_model(rule: object) -> bool:
    from pydantic import BaseModel

    return isinstance(rule, type) and issubclass(rule, BaseModel)
