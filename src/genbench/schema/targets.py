"""The rule of a ``_target_`` node is the signature of what it builds.

A network, a family, the data module or the progress bar declares each argument's type and range in its own
constructor (``base_channels: PositiveInt``, with the types of :mod:`genbench.schema.types`), so a key cannot be
added to a config without the parameter, and a parameter carries its rule where it is read. A node may set only
the arguments its target takes (the nearest name is suggested otherwise); arguments the code itself passes at
build time (a network's image size and classes, taken from the data) cannot be set at all. Nested ``_target_`` nodes
(a family's networks and optimizers) are checked the same way. Targets from other libraries get the rules here:
torch's optimizers (:data:`OPTIMIZER_RULES`, and torch's own check in preflight), Lightning's Trainer
(genbench.schema.groups.TrainerConfig) and loggers (their argument names).
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import typing
from typing import Any, Callable

from hydra.utils import get_object
from pydantic import ConfigDict, create_model

from genbench.errors import GenbenchError
from genbench.schema.check import nearest, show, validate
from genbench.schema.types import Flag, Float, NonNegativeFloat, PositiveFloat, Probability

HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
# What a family passes to its networks, and the model builder to a family, from the data: never set in a config.
# (An optimizer's ``params`` are the model's, given when it is built.)
SUPPLIED = frozenset({"image_shape", "num_classes", "class_names", "image_channels", "image_size", "params"})
# What train.py gives the callbacks of conf/callbacks from the run (train.callback_context), never set in a config.
CALLBACK_CONTEXT = frozenset({"run_dir", "run_seed", "budget", "sampler", "sampler_kwargs", "metrics_cfg"})
# torch.optim's arguments by name (torch types them as float | Tensor, which says nothing of range).
OPTIMIZER_RULES: dict[str, Any] = {
    "lr": PositiveFloat, "weight_decay": NonNegativeFloat, "eps": PositiveFloat, "momentum": Probability,
    "dampening": Probability, "alpha": Probability, "rho": Probability, "lr_decay": NonNegativeFloat,
    "initial_accumulator_value": NonNegativeFloat, "betas": tuple[Probability, Probability],
    "amsgrad": Flag, "nesterov": Flag, "maximize": Flag, "foreach": Flag | None, "capturable": Flag,
    "differentiable": Flag, "fused": Flag | None, "centered": Flag, "decoupled_weight_decay": Flag,
    "momentum_decay": NonNegativeFloat, "lambd": NonNegativeFloat, "t0": Float,
}  # fmt: skip
# Not strict as a whole (betas come as a list for a tuple); genbench's own types are strict one by one.
_STRICT = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)


def _locate(target: str, key: str) -> Callable:
    try:
        return get_object(target)
    except Exception:  # noqa: BLE001 - Hydra raises ImportError or its own for a bad dotted path
        raise GenbenchError(f"{key}._target_={target} cannot be imported (expected a dotted path to a class)") from None


def _parameters(target: Callable) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Named parameters of ``target`` (a class's ``__init__`` through ``**base`` up to its bases), their type hints,
    and whether it takes any other keyword (``**kwargs`` all the way up)."""
    owners = [c for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    open_ended = False
    for owner in owners:
        function = owner.__init__ if inspect.isclass(owner) else owner
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return params, hints, True
        try:
            hints |= {k: v for k, v in typing.get_type_hints(function, include_extras=True).items() if k not in hints}
        except Exception:  # noqa: BLE001 - a foreign module's annotations may not resolve; then its names only
            pass
        rest = False
        for name, param in signature.parameters.items():
            if param.kind is param.VAR_KEYWORD:
                rest = True
            elif param.kind is not param.VAR_POSITIONAL and name != "self":
                params.setdefault(name, param)
        if not rest:
            return params, hints, False
        open_ended = rest
        if not inspect.isclass(target) or owner is object:
            break
    return params, hints, open_ended


@functools.cache
def target_model(target: str, supplied: frozenset[str]):
    """(the pydantic model of ``target``'s arguments, whether it takes any other keyword)."""
    obj = get_object(target)
    params, hints, open_ended = _parameters(obj)
    optimizer = target.startswith("torch.optim.")
    fields = {}
    for name, param in params.items():
        if name in supplied:
            continue
        annotation = OPTIMIZER_RULES.get(name, Any) if optimizer else hints.get(name, Any)
        if _takes_callable(annotation) or _is_object(annotation):
            annotation = Any  # a nested _target_ node, checked on its own
        default = ... if param.default is param.empty else param.default
        fields[name] = (annotation, default)
    config = ConfigDict(**{**_STRICT, "extra": "allow" if open_ended else "forbid"})
    return create_model(f"Args_{target.replace('.', '_')}", __config__=config, **fields), open_ended


def _takes_callable(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return annotation in (Callable, collections.abc.Callable) or origin is collections.abc.Callable


def _is_object(annotation: Any) -> bool:
    """An argument that takes a built object (a schedule, a module), given as a nested _target_ node."""
    return inspect.isclass(annotation) and not issubclass(annotation, (int, float, str, bool, list, tuple, dict))


def described(target: str, supplied: frozenset[str] = SUPPLIED) -> dict[str, Any]:
    """Argument name -> its rule (``Any`` where there is none), for the tests that walk every config leaf."""
    model, _ = target_model(target, supplied)
    return {name: field.annotation for name, field in model.model_fields.items()}


def check_target(node: dict, key: str, supplied: frozenset[str] = frozenset()) -> None:
    """``node`` (a ``_target_`` group at ``key``) sets only arguments its target takes, each within its rule."""
    if not isinstance(node, dict) or "_target_" not in node:
        raise GenbenchError(f"{key}={show(node)}; expected a group with a _target_")
    target = node["_target_"]
    if not isinstance(target, str) or not target:
        raise GenbenchError(f"{key}._target_={show(target)}; expected a dotted path to a class")
    _locate(target, key)
    for flag in ("_partial_", "_recursive_"):
        if flag in node and not isinstance(node[flag], bool):
            raise GenbenchError(f"{key}.{flag}={show(node[flag])}; expected true or false")
    model, open_ended = target_model(target, supplied)
    values = {k: v for k, v in node.items() if k not in HYDRA_KEYS}
    for name in values:
        if name in supplied:
            raise GenbenchError(f"{key}.{name} is set by genbench (from the data: its image size, channels and "
                                "classes; or from the run: its folder, seed, budget, sampler and metrics), not here")  # fmt: skip
        if name not in model.model_fields and not open_ended:
            raise GenbenchError(f"{key}.{name}: unknown key ({target} takes no such argument)"
                                f"{nearest(name, model.model_fields)}")  # fmt: skip
    nested = {k: v for k, v in values.items() if isinstance(v, dict) and "_target_" in v}
    for name, child in nested.items():
        check_target(child, f"{key}.{name}", supplied)
    validate(model, {k: (None if k in nested else v) for k, v in values.items()}, key)
