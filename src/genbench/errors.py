"""The contract's error path: bad input ends with one ``genbench: error:`` line and exit code 2."""

from __future__ import annotations

import errno
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


# The machine's refusals that a user fixes with another path, more space or permissions, never with a code change.
MACHINE_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "not a folder (a file stands where this path needs a folder)",
    errno.EISDIR: "is a folder (expected a file)",
    errno.EEXIST: "already exists and is in the way (a file where a folder is expected?)",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "file name too long",
}


def machine_error_message(exc: BaseException) -> str | None:
    """``<path>: <what was wrong>`` for an OSError of :data:`MACHINE_ERRNOS`, else None."""
    if not isinstance(exc, OSError) or exc.errno not in MACHINE_ERRNOS:
        return None
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    what = MACHINE_ERRNOS[exc.errno]
    return f"{' -> '.join(paths)}: {what}" if paths else f"{what} (while writing or reading a file)"


def user_error_message(exc: BaseException) -> str | None:
    """One line for a user error anywhere in ``exc``'s cause chain (ours, Hydra's or OmegaConf's, or the machine's
    refusal of a path: :data:`MACHINE_ERRNOS`), else None."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    user_errors_ = (GenbenchError, ConfigCompositionException, MissingConfigException, OverrideParseException,
                    OmegaConfBaseException)  # fmt: skip
    chain, seen = [], exc
    while seen is not None and len(chain) < 32:  # bounded: a chain that loops back on itself
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    ours = next((e for e in chain if isinstance(e, GenbenchError)), None)
    if ours is not None:  # the most specific message, also where OmegaConf wraps it (an error in a resolver)
        return " ".join(str(ours).split())
    for seen in chain:
        if isinstance(seen, OverrideParseException):  # with how to quote the value (genbench/quoting.py)
            from genbench.quoting import override_error

            return override_error(seen)
        if (machine := machine_error_message(seen)) is not None:
            return machine
        if isinstance(seen, user_errors_):
            text = str(seen)
            if isinstance(seen, ConfigCompositionException) and isinstance(seen.__cause__, OmegaConfBaseException):
                text = f"{text} {seen.__cause__}"
            text = text.split("Config search path")[0]  # Hydra's search-path dump helps nobody here
            return " ".join(text.replace("\t", " ").split())
    return None


def user_errors(fn: F) -> F:
    """Turn GenbenchError and the machine's errors (also when wrapped by Hydra's instantiate) into the contract's
    error line.

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
