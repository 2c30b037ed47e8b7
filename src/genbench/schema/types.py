"""The constrained types every config rule is written with: one name per kind of value, its range in the type.

They are ``typing.Annotated`` types that pydantic checks (strict: ``"3"`` is not an int, ``2.5`` is not a step count,
``true`` is not a number) and that mean nothing to anyone else, so a constructor can carry its own rule in its
signature (``base_channels: PositiveInt``) without depending on pydantic at run time.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Interval, Le, Lt, MinLen
from pydantic import AfterValidator, BeforeValidator, Strict

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _int_to_str(value: object) -> object:
    """``name=2024`` or ``out=7``: Hydra reads them as ints; as names and paths they are the text the user typed."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _one_path_component(value: str) -> str:
    """A run name becomes one folder under ``paths.runs_dir/``: never a path out of it, never the folder itself."""
    if value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ValueError("expected a name for one folder (no '/', no '..')")
    return value


FLOP_SUFFIXES = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


def parse_flops(value: object) -> object:
    """A FLOP count as a config gives it: a number (``2e13``), or a number and one of the suffixes K, M, G, T, P
    (``20T``, which Hydra reads as text) as that number. Anything else is left for the type to refuse."""
    if isinstance(value, str) and value.strip():
        text = value.strip()
        scale = FLOP_SUFFIXES.get(text[-1], 1.0)
        try:
            return float(text[:-1] if text[-1] in FLOP_SUFFIXES else text) * scale
        except ValueError:
            raise ValueError("expected a number of FLOPs such as 2e13 or 20T (suffixes K, M, G, T, P)") from None
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


# Every float is finite: pydantic's allow_inf_nan=False is a model setting, and these types also serve signatures.
Float = Annotated[float, Strict(), AfterValidator(_finite)]
PositiveInt = Annotated[int, Strict(), Ge(1)]
NonNegativeInt = Annotated[int, Strict(), Ge(0)]
PositiveFloat = Annotated[float, Strict(), AfterValidator(_finite), Gt(0)]
NonNegativeFloat = Annotated[float, Strict(), AfterValidator(_finite), Ge(0)]
Probability = Annotated[float, Strict(), AfterValidator(_finite), Interval(ge=0, le=1)]
OpenUnit = Annotated[float, Strict(), AfterValidator(_finite), Interval(gt=0, lt=1)]
Percentile = Annotated[float, Strict(), AfterValidator(_finite), Interval(gt=0, lt=100)]
Seed = Annotated[int, Strict(), Ge(0), Le(MAX_SEED)]
FlopCount = Annotated[float, BeforeValidator(parse_flops), Strict(), AfterValidator(_finite), Gt(0)]  # 2e13 or "20T"
Text = Annotated[str, BeforeValidator(_int_to_str), MinLen(1)]  # any non-empty text
RunName = Annotated[str, BeforeValidator(_int_to_str), MinLen(1), AfterValidator(_one_path_component)]
PathText = Text  # a file or folder; whether it exists or can be written is a named check where it is used
Flag = Annotated[bool, Strict()]
Auto = Literal["auto"]
Device = Annotated[str, MinLen(1)]  # auto | cpu | cuda[:N], checked by genbench.devices where it is used

__all__ = [
    "Auto", "Device", "Flag", "FlopCount", "Float", "Ge", "Gt", "Le", "Lt", "NonNegativeFloat", "NonNegativeInt", "OpenUnit",
    "PathText", "Percentile", "PositiveFloat", "PositiveInt", "Probability", "RunName", "Seed", "Text", "MAX_SEED",
]  # fmt: skip
