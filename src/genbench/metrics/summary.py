"""The few lines ``evaluate`` prints: the protocol, the main scores and where the full record went.

The record itself (every field, about 2.5 KB of JSON) belongs in its file, which tools read; the terminal gets what a
person looks for first.
"""

from __future__ import annotations

import math
from pathlib import Path

# (label, key of the value, key of its spread or None, decimals): the contract's main scores, in the order reported
SCORES = (
    ("FID", "fid", None, 2),
    ("FID∞", "fid_inf", None, 2),
    ("KID", "kid_mean", "kid_std", 4),
    ("IS", "is_mean", "is_std", 2),
    ("precision", "precision", None, 3),
    ("recall", "recall", None, 3),
    ("density", "density", None, 3),
    ("coverage", "coverage", None, 3),
    ("memorization", "memorization", None, 3),
)


def _number(value, decimals: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return f"{value:.{decimals}f}"


def score_summary(record: dict, written: list[Path]) -> str:
    """``protocol ...``, one line of scores (``n/a`` where a score was not computed) and a ``wrote PATH`` per file."""
    parts = []
    for label, key, spread, decimals in SCORES:
        value = _number(record.get(key), decimals)
        if value is not None and spread is not None and (plus := _number(record.get(spread), decimals)) is not None:
            value = f"{value} ± {plus}"
        parts.append(f"{label} {value or 'n/a'}")
    lines = [f"protocol {record.get('protocol')}: {record.get('n_fake')} generated against {record.get('n_real')} "
             f"real images, {record.get('extractor')} features", " · ".join(parts), *(f"wrote {path}" for path in written)]  # fmt: skip
    return "\n".join(lines)
