"""Where scores live: one file per protocol, so a score of one protocol never replaces another's.

In a run folder::

    metrics/<protocol>.json   every score of the run, one per protocol
    metrics.json              the run's own protocol (the one its training config's metrics.* and sampler.* define)

For bare images (``evaluate samples=``): ``FOLDER/metrics/<protocol>.json`` or ``X.metrics/<protocol>.json``
beside an ``X.npz``. Re-scoring under the same protocol replaces that protocol's file: with per-image noise
(:mod:`genbench.noise`) the same protocol gives the same images and the same numbers, so the rewrite is harmless
(up to floating-point reduction order on another device). A ``metrics.json`` that holds another protocol (say,
``metrics.extractor=auto`` that resolved differently on another machine) is kept, never replaced; one written
before protocol ids existed is moved to ``metrics/<its legacy id>.json`` first, so it is never lost.
"""

from __future__ import annotations

import logging
from pathlib import Path

from genbench.errors import GenbenchError
from genbench.metrics.protocol import record_protocol
from genbench.files import check_writable, read_json, write_json

log = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
METRICS_DIR = "metrics"


def score_dir(target: Path) -> Path:
    """The folder of per-protocol files for a run folder, an image folder or an .npz."""
    target = Path(target)
    return target / METRICS_DIR if target.is_dir() else target.with_name(f"{target.stem}.{METRICS_DIR}")


def read_json_object(path: Path) -> dict | None:
    """A JSON object from ``path``, or None (with a warning) when it is unreadable or not an object."""
    value = read_json(path, skip_bad=True)
    return value if isinstance(value, dict) else None


def check_destination(path: Path, protocol: str) -> None:
    """Refuse, before any work, a file that exists and holds anything but a score of ``protocol``."""
    path = Path(path)
    if path.is_dir():
        raise GenbenchError(f"out={path} is a folder; expected the path of a .json file to write the score to")
    if not path.parent.is_dir() and path.parent.exists():
        raise GenbenchError(f"cannot write {path}: {path.parent} is not a folder")
    if path.exists():
        existing = read_json_object(path)
        held = None if existing is None else existing.get("protocol")
        if held != protocol:
            what = f"a score of protocol {held}" if held else "something that is not a genbench score"
            raise GenbenchError(
                f"{path} already holds {what}; this evaluation's protocol is {protocol} and a score never replaces "
                "another protocol's: choose another out= or remove the file"
            )


def check_store(target: Path) -> None:
    """The per-protocol folder of ``target`` can be made and written (checked before any work)."""
    folder = score_dir(target)
    if folder.exists() and not folder.is_dir():
        raise GenbenchError(f"{folder} exists and is not a folder; genbench keeps one score per protocol there")
    check_writable(folder)  # a read-only run folder fails now, not after sampling and scoring


def write_score(target: Path, record: dict, own: bool = False) -> list[Path]:
    """Write ``record`` under its protocol for ``target`` (a run folder, image folder or .npz); returns the paths.

    ``own``: the record is the run's own protocol, so it also goes to ``metrics.json`` (unless that holds another).
    """
    protocol = record["protocol"]
    folder = score_dir(target)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{protocol}.json"
    if path.exists():
        log.info("%s: replacing the earlier score of the same protocol (same protocol, same images)", path)
    write_json(path, record)
    log.info("wrote %s", path)
    written = [path]
    if not own:
        return written
    main = Path(target) / METRICS_JSON
    existing = read_json_object(main) if main.exists() else None
    if existing is not None and existing.get("protocol") is None:
        legacy = folder / f"{record_protocol(existing).id}.json"
        write_json(legacy, existing)
        log.info("%s predates protocol ids: kept as %s", main, legacy)
        existing = None
    if existing is not None and existing.get("protocol") != protocol:
        log.warning("%s keeps the run's earlier score (protocol %s); this one (protocol %s) is only in %s",
                    main, existing.get("protocol"), protocol, path)  # fmt: skip
        return written
    write_json(main, record)
    log.info("wrote %s (the run's own protocol)", main)
    return written + [main]


def read_scores(folder: Path) -> tuple[dict | None, list[dict]]:
    """(``metrics.json``, every score of the folder: one record per protocol, ``metrics.json``'s included)."""
    folder = Path(folder)
    own = read_json_object(folder / METRICS_JSON) if (folder / METRICS_JSON).is_file() else None
    by_protocol: dict[str, dict] = {}
    files = sorted((folder / METRICS_DIR).glob("*.json")) if (folder / METRICS_DIR).is_dir() else []
    for record in [own, *(read_json_object(p) for p in files)]:
        if record is not None:
            by_protocol.setdefault(record_protocol(record).id, record)
    return own, list(by_protocol.values())
