"""The one line for a command-line override Hydra cannot read, saying how to quote it.

What Hydra's override grammar (hydra.cc, "override grammar") reads, as the shell hands it over:

- spaces inside a value need no quotes of Hydra's: ``name="my run"`` at a shell prompt arrives as ``name=my run`` and
  is read as ``my run`` (spaces at either end are dropped);
- letters outside ASCII (``name=über``) and the characters in :data:`RESERVED` must be inside Hydra's own quotes,
  which the shell's quotes keep: ``'name="über"'`` or ``name='"über"'``.
"""

from __future__ import annotations

import shlex

from hydra.errors import OverrideParseException

_LEXER = "LexerNoViableAltException: "
# The printable ASCII characters Hydra 1.3 does not read inside an unquoted value (checked one by one); "," makes a
# sweep of one value in a single run.
RESERVED = "any of = , [ ] { } ( ) ' \" ! # & ; < > ^ ` ~"


def _reason(exc: OverrideParseException) -> str:
    """What Hydra stumbled on: the character its lexer could not read, else its parser's first line."""
    lines = exc.message.splitlines()
    if lines and lines[0].startswith(_LEXER) and len(lines) > 1 and "^" in lines[1]:
        position = lines[1].index("^") - len(_LEXER)
        if 0 <= position < len(exc.override):
            return f"Hydra cannot read {exc.override[position]!r} outside quotes"
    first = next((line for line in lines if line.strip() and not line.startswith("Error parsing")), "")
    return f"Hydra: {first.strip() or 'unreadable'}"


def override_error(exc: OverrideParseException) -> str:
    """``cannot read the override K=V: <why>; quote it ...: 'K="V"'`` (one line, the suggestion ready to paste)."""
    override = exc.override
    key, equals, value = override.partition("=")
    if not equals:
        return f"cannot read the override {override!r} ({_reason(exc)}); overrides are KEY=VALUE"
    if len(value) >= 1 and value[0] in "'\"":  # quoted already, but not closed or not alone: quote it afresh
        value = value[1:-1] if len(value) > 1 and value[-1] == value[0] else value[1:]
    suggestion = shlex.quote(f'{key}="' + value.replace('"', '\\"') + '"')
    return (f"cannot read the override {override} ({_reason(exc)}): a value holding non-ASCII letters or "
            f"{RESERVED} goes inside Hydra's quotes, within the shell's: {suggestion}")
