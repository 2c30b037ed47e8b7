"""One schema for every config key: type, range and choices, declared once, checked before any work.

:mod:`~genbench.schema.types` names the kinds of values, :mod:`~genbench.schema.groups` holds the rules of each
config group and command, :mod:`~genbench.schema.targets` reads the rules of ``_target_`` nodes from the signatures
of what they build. ``check_config`` (genbench.schema.commands) is what each command's preflight calls on its composed config.
"""

from __future__ import annotations

# Submodules load on first use: networks import genbench.schema.types for their signatures and must not pull in
# Hydra or Lightning with it.


def __getattr__(name: str):
    if name in ("check_config", "check_trainer_arguments", "resolved", "COMMANDS"):
        from genbench.schema import commands

        return getattr(commands, name)
    raise AttributeError(name)
