"""On-disk cache of reference features, keyed by everything that changes them.

An entry is ``<key>.pt`` (the features by layer) beside ``<key>.json`` (the key's fields and the sha256 of the
``.pt`` file). The key is the sha256 of the canonical JSON of the fields: data fingerprint, split, image count,
extractor name, weights sha256, layers, genbench's cache format version. An entry whose checksum does not match
or that fails to load is logged, deleted and rebuilt. ``hits`` and ``misses`` count lookups (for tests and logs).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import torch

from genbench.files import atomic_open, read_json, write_json
from genbench.metrics.classifier import sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_DIR = "~/.cache/genbench"


def cache_key(fields: dict) -> str:
    canonical = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class FeatureCache:
    """Features by layer (CPU float tensors) stored under ``root/features``; ``root=None`` disables caching."""

    def __init__(self, root: str | Path | None = DEFAULT_DIR):
        self.root = Path(root).expanduser() / "features" if root else None
        self.hits = 0
        self.misses = 0

    def paths(self, fields: dict) -> tuple[Path, Path]:
        key = cache_key(fields)
        return self.root / f"{key}.pt", self.root / f"{key}.json"

    def load(self, fields: dict) -> dict[str, torch.Tensor] | None:
        if self.root is None:
            return None
        data_path, meta_path = self.paths(fields)
        if not data_path.exists() and not meta_path.exists():
            return None
        try:
            meta = read_json(meta_path, what="cache entry")
            if sha256_file(data_path) != meta["sha256"]:
                raise ValueError("checksum mismatch")
            features = torch.load(data_path, map_location="cpu", weights_only=True)
            if not isinstance(features, dict) or not all(torch.is_tensor(v) for v in features.values()):
                raise ValueError("unexpected content")
        except Exception as exc:  # noqa: BLE001 - any failure means the entry is unusable
            log.warning("corrupt cache entry %s (%s): rebuilding it", data_path, exc)
            data_path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            return None
        return features

    def save(self, fields: dict, features: dict[str, torch.Tensor]) -> None:
        if self.root is None:
            return
        data_path, meta_path = self.paths(fields)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_open(data_path, "wb") as f:
                torch.save({k: v.contiguous() for k, v in features.items()}, f)
            meta = {"sha256": sha256_file(data_path), "fields": fields, "count": len(next(iter(features.values())))}
            write_json(meta_path, meta)
        except OSError as exc:  # a read-only or full cache dir costs time, not correctness
            log.warning("cannot write cache entry %s: %s", data_path, exc)

    def get_or_compute(self, fields: dict, compute: Callable[[], dict[str, torch.Tensor]], what: str) -> dict[str, torch.Tensor]:
        """Cached features for ``fields``, computing and storing them on a miss."""
        features = self.load(fields)
        if features is not None:
            self.hits += 1
            log.info("%s: cache hit (%s)", what, self.paths(fields)[0])
            return features
        self.misses += 1
        features = compute()
        self.save(fields, features)
        if self.root is not None:
            log.info("%s: computed and cached (%s)", what, self.paths(fields)[0])
        return features
