"""Evaluation protocols: what decides a score, and the short, stable id that names it.

A score is comparable with another only when everything that decides it is the same. :func:`protocol_fields` is
the one place that says what that is; :func:`protocol_id` names those fields. The fields:

* ``extractor`` and ``extractor_sha256``: the feature network (torch-fidelity registry name) and its weights
  (with ``metrics.extractors``, each extractor makes its own protocol of the same images);
* ``reference`` and ``n_real``: the real images, by the fingerprint of their split (or the sha256 of their pixels
  for a folder or .npz) and their count. A train or val split is drawn by the run's data seed, which is written
  ``seed*``: each run is scored against its own split, and the seeds of a study share one protocol;
* ``n_fake``: generated images scored;
* ``sampler``: the sampler settings that applied (``model.sampler_settings``), null for a model that takes none
  (GAN, VAE) and for bare images;
* ``seed``: the sampling noise (image i gets the stream of ``(seed, i)``, see :mod:`genbench.noise`) and the seed
  of KID's subsets and IS's shuffle;
* ``kid_subsets``, ``kid_subset_size``, ``isc_splits`` (null without class logits), ``prc_neighborhood``: metric
  settings as configured (the adapted sizes follow from them and the counts);
* ``memorization``: null when not computed, else the held-out split and the percentile of its threshold;
* ``version``: bumped when genbench changes what a score means under the same settings (e.g. label balancing);
* ``conversions`` (only when there are any): what was changed between the files and the pixels scored, where it
  changes them: a 16-bit depth cut that dropped bits, transparency dropped, generated images of another size or
  channel count than the reference (see ``genbench.metrics.evaluator.conversions``).

What does not enter: ``metrics.batch_size``, ``metrics.device`` and ``metrics.cache_dir`` (per-image noise makes
the images the same at any batch size or device; a cached reference is keyed by its content), weight file paths
(their hash enters), and the model's own training images (memorization's bank is the run's, not the protocol's).

An id reads ``<extractor>-n<n_fake>[-<sampler><steps>[-bf16]]-<hash>``, e.g. ``fmnist_classifier-n1000-ddim20-3f9a2c1b``
(``-bf16``: the network sampled under bf16 autocast, ``sampler.precision=bf16-mixed``; fp32 sampling says nothing),
where the hash is the first 8 hex digits of the sha256 of the fields' canonical JSON. The *scoring* protocol is
the same id with the sampler left out: the evaluation every family shares, which the report makes one table of
(a one-pass model's row and a DDIM-20 row side by side); rows never mix full protocols.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

VERSION = 1
SHORT_EXTRACTOR = {"inception-v3-compat": "inception"}  # registry names that have a shorter usual name


@dataclass(frozen=True)
class Protocol:
    id: str
    scoring_id: str  # without the sampler: what every family's score under this evaluation shares
    fields: dict


def reference_identity(cache_fields: dict | None, description: str) -> str:
    """The reference images as a protocol sees them: their split's fingerprint, or their pixels' sha256."""
    if not cache_fields:
        return f"unfingerprinted:{description}"
    if "content_sha256" in cache_fields:
        return f"sha256:{cache_fields['content_sha256']}"
    data = re.sub(r"-seed\d+", "-seed*", str(cache_fields.get("data")))
    return f"{data}/{cache_fields.get('split')}@{cache_fields.get('image_size')}px"


def protocol_fields(
    config,
    extractor_name: str,
    extractor_sha256: str,
    reference: str,
    n_real: int,
    n_fake: int,
    sampler: dict | None,
    has_isc: bool,
    memorization: bool,
    conversions: list[str] | None = None,
) -> dict:
    """Everything that decides a score, and nothing else (see the module docstring). ``config``: a MetricsConfig."""
    fields = {
        "version": VERSION,
        "extractor": extractor_name,
        "extractor_sha256": extractor_sha256,
        "reference": reference,
        "n_real": int(n_real),
        "n_fake": int(n_fake),
        "sampler": None if sampler is None else dict(sorted(sampler.items())),
        "seed": int(config.seed),
        "kid_subsets": int(config.kid_subsets),
        "kid_subset_size": int(config.kid_subset_size),
        "isc_splits": int(config.isc_splits) if has_isc else None,
        "prc_neighborhood": int(config.prc_neighborhood),
        "memorization": {"heldout_split": config.heldout_split, "percentile": float(config.memorization_percentile)}
        if memorization
        else None,
    }
    if conversions:  # absent when none, so the protocols of unconverted images keep their ids
        fields["conversions"] = sorted(conversions)
    return fields


def _digest(fields: dict) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def _safe(text: str) -> str:
    """Only characters that are safe in a file name and a Hydra override value."""
    return re.sub(r"[^A-Za-z0-9_.]+", "_", str(text)).strip("_") or "x"


def protocol_id(fields: dict) -> str:
    """``<extractor>-n<n_fake>[-<sampler><steps>[-bf16]]-<hash>``; stable across runs, machines and dict orders."""
    parts = [_safe(SHORT_EXTRACTOR.get(fields["extractor"], fields["extractor"])), f"n{int(fields['n_fake'])}"]
    sampler = fields.get("sampler")
    if sampler:
        steps = sampler.get("steps")
        parts.append(_safe(f"{sampler.get('sampler', 'sampler')}{'' if steps is None else int(steps)}"))
        if sampler.get("precision") == "bf16-mixed":  # fp32 sampling has no precision field (see sampler_settings)
            parts.append("bf16")
    return "-".join(parts + [_digest(fields)])


def make_protocol(fields: dict) -> Protocol:
    return Protocol(protocol_id(fields), protocol_id({**fields, "sampler": None}), fields)


def legacy_protocol(record: dict) -> Protocol:
    """A protocol for a record written before protocol ids existed (no ``protocol`` field).

    It had only the extractor, its hash, the counts, the reference name and the sampler to go by; the id says
    ``legacy`` so it never passes for, or merges with, a full one.
    """
    reference = re.sub(r"-seed\d+", "-seed*", str(record.get("reference")))
    base = {key: record.get(key) for key in ("extractor", "extractor_sha256", "n_real", "n_fake")}
    base |= {"reference": reference, "legacy": True}
    sampler = {"sampler": record["sampler"], "steps": record.get("sampler_steps")} if record.get("sampler") else None
    fields = {**base, "sampler": sampler}
    extractor = SHORT_EXTRACTOR.get(str(base["extractor"]), str(base["extractor"]))
    n_fake = base["n_fake"] if isinstance(base["n_fake"], int) else 0
    full = protocol_id({**fields, "extractor": f"legacy-{extractor}", "n_fake": n_fake})
    scoring = protocol_id({**fields, "extractor": f"legacy-{extractor}", "n_fake": n_fake, "sampler": None})
    return Protocol(full, scoring, fields)


def record_protocol(record: dict) -> Protocol:
    """The protocol of a metrics record, new (``protocol`` and ``protocol_fields`` inside) or legacy."""
    if record.get("protocol") and isinstance(record.get("protocol_fields"), dict):
        fields = record["protocol_fields"]
        scoring = record.get("scoring_protocol") or protocol_id({**fields, "sampler": None})
        return Protocol(str(record["protocol"]), str(scoring), fields)
    return legacy_protocol(record)
