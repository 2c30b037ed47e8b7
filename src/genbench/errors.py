"""The contract's error path: bad input ends with one ``genbench: error:`` line and exit code 2."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class GenbenchError(Exception):
    """Bad user input: a path, file, config value, checkpoint or shape that cannot be used."""


def fail(message: str) -> "NoReturn":  # noqa: F821 - typing only
    """Print the contract's one-line error and exit with code 2."""
    print(f"genbench: error: {message}", file=sys.stderr)
    sys.exit(2)


def user_error_message(exc: BaseException) -> str | None:
    """One line for a user error anywhere in ``exc``'s cause chain (ours, Hydra's or OmegaConf's), else None."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    user_errors_ = (GenbenchError, ConfigCompositionException, MissingConfigException, OverrideParseException,
                    OmegaConfBaseException)  # fmt: skip
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OverrideParseException):  # with how to quote the value (genbench/quoting.py)
            from genbench.quoting import override_error

            return override_error(seen)
        if isinstance(seen, user_errors_):
            text = str(seen)
            if isinstance(seen, ConfigCompositionException) and isinstance(seen.__cause__, OmegaConfBaseException):
                text = f"{text} {seen.__cause__}"
            text = text.split("Config search path")[0]  # Hydra's search-path dump helps nobody here
            return " ".join(text.replace("\t", " ").split())
        seen = seen.__cause__ or seen.__context__
    return None


def user_errors(fn: F) -> F:
    """Turn GenbenchError (also when wrapped by Hydra's instantiate) into the contract's error line.

    ``HYDRA_FULL_ERROR=1`` re-raises so the traceback is visible.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - we filter below
            message = user_error_message(exc)
            if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(message)

    return wrapper  # type: ignore[return-value]
