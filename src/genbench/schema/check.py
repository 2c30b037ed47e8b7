"""Validation against the schema, and the one line a refusal prints.

pydantic (not Hydra's structured configs) holds the rules: OmegaConf's dataclass schemas check types but cannot say
"an integer >= 1", "a finite number" or "one of hinge, wgan_gp", which are most of what went wrong; pydantic's
``Annotated`` types carry type, range and choices in one declaration, forbid unknown keys, and report where a value
failed. Validation runs in each command's preflight on the composed, resolved config, before anything is loaded
or written; its first failure becomes a :class:`~genbench.errors.GenbenchError` naming the key, the value and what
was expected (and, for an unknown key, the nearest known name).
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from genbench.errors import GenbenchError

# How pydantic names a union's member in an error's location (``constrained-int``, ``literal['auto']``, ``none``):
# those parts are not keys of the config.
_UNION_MEMBER = re.compile(r"[^A-Za-z0-9_]|^(int|float|str|bool|none|list|dict|tuple)$")


def show(value: Any) -> str:
    """A value as it would be typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return repr(value) if (value == "" or value != value.strip()) else value
    return str(value)


def _expected(error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    bounds = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}",
              "less_than": "< {lt}"}  # fmt: skip
    if kind == "greater_than_equal" and ctx.get("ge") == 1:
        return "a positive integer"
    if kind == "greater_than" and ctx.get("gt") == 0:
        return "a positive number"
    if kind in bounds:
        return f"a value {bounds[kind].format(**{k: show(v) for k, v in ctx.items()})}"
    if kind == "literal_error":
        choices = ctx["expected"].replace("'", "").replace(" or ", ", ")
        return choices if "," not in choices else f"one of {choices}"
    if kind == "too_short":
        return "a non-empty value"
    if kind == "missing":
        return "a value (the key is required)"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"])).removeprefix("Value error, ").removeprefix("expected ")
    words = {"int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
             "finite_number": "a finite number", "bool_type": "true or false", "string_type": "text",
             "list_type": "a list", "dict_type": "a group of keys", "none_required": "null",
             "model_type": "a group of keys", "tuple_type": "a list"}  # fmt: skip
    return words.get(kind, error["msg"][0].lower() + error["msg"][1:])


def _key(prefix: str, loc: Iterable) -> str:
    parts = [prefix] if prefix else []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{part}]"]
        elif i == 0 or not _UNION_MEMBER.search(str(part)):
            parts.append(str(part))
    return ".".join(parts)


def nearest(name: str, known: Iterable[str]) -> str:
    """``; did you mean X?`` for a mistyped key, else the keys that exist there."""
    known = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; known keys there: {', '.join(known)}" if known else ""


def fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the (sub-)model that ``loc`` points into."""
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        sub = getattr(field, "annotation", None) if field is not None else None
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model = sub
        else:
            break
    return list(model.model_fields)


def refusal(exc: ValidationError, model: type[BaseModel], prefix: str) -> GenbenchError:
    """The first failure of ``exc`` as one line: the key, its value and what was expected."""
    errors = exc.errors()
    first = errors[0]
    key = _key(prefix, first["loc"])
    if first["type"] == "extra_forbidden":
        loc = tuple(first["loc"])
        return GenbenchError(f"{key}: unknown key{nearest(loc[-1], fields_at(model, loc[:-1]))}")
    if first["type"] == "value_error" and not first["loc"]:  # a rule across keys says the whole line itself
        return GenbenchError(str(first["ctx"]["error"]))
    same = [e for e in errors if _key(prefix, e["loc"]) == key]
    expected = []
    for error in same:
        text = _expected(error)
        if text not in expected:
            expected.append(text)
    return GenbenchError(f"{key}={show(first['input'])}; expected {' or '.join(expected)}")


def validate(model: type[BaseModel], values: dict, prefix: str = "") -> BaseModel:
    """``values`` checked against ``model``; a :class:`GenbenchError` for the first bad key."""
    if not isinstance(values, dict):
        raise GenbenchError(f"{prefix or 'the config'}={show(values)}; expected a group of keys")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise refusal(exc, model, prefix) from None
