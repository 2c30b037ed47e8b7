"""Score a checkpoint or a set of images with the one evaluator, under a named protocol.

    python -m genbench.evaluate ckpt=RUN/checkpoints/last.ckpt [metrics.n_samples=N] [sampler=ddpm sampler.steps=K]
    python -m genbench.evaluate samples=FOLDER_OR_NPZ [data=fashion_mnist | reference=FOLDER_OR_NPZ]

A checkpoint is scored under its run's own protocol (the ``metrics.*`` and ``sampler.*`` of its training config)
unless the command line overrides keys. The protocol id is logged before any sampling; the score goes to
``RUN/metrics/<protocol>.json``, and to ``RUN/metrics.json`` too when it is the run's own protocol (see
:mod:`genbench.metrics.store`). Bare images go to ``FOLDER/metrics/<protocol>.json`` or ``X.metrics/<protocol>.json``.
``out=FILE.json`` writes there instead (never over another protocol's score). ``metrics.extractors=[A, B]`` scores
the same images under each extractor, one protocol and one file each (the first is the run's own); ``out=`` then
does not apply. Prints a short summary on stdout (the
protocol, the main scores, the files written: :mod:`genbench.metrics.summary`); the full record is in the file.
Logs and progress go to stderr.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genbench.cli import hydra_entry
from genbench.errors import GenbenchError
from genbench.schema import check_config
from genbench.metrics import MetricsConfig, images_from_datamodule, images_from_path, plan_evaluations, score_images
from genbench.metrics.store import check_destination, check_store, score_dir, write_score
from genbench.files import check_writable, write_json
from genbench.metrics.summary import score_summary
from genbench.training.identity import check_checkpoint_belongs

log = logging.getLogger("genbench.evaluate")


def _datamodule(data_cfg: DictConfig):
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def _data_overrides() -> DictConfig:
    """``data.*`` overrides given on this command line, to apply on top of a checkpoint's own data config."""
    from genbench.metrics.settings import given

    dotlist = [o.lstrip("+~") for o in given("data") if "." in o.split("=", 1)[0]]
    return OmegaConf.from_dotlist(dotlist).get("data", OmegaConf.create({}))


def check_one_score(config: MetricsConfig) -> None:
    """``out=FILE.json`` holds one score: refused with several extractors (a run's own or the command's)."""
    if len(config.extractor_names()) > 1:
        raise GenbenchError(f"out=FILE.json holds one score, and metrics.extractors={config.extractors} asks for one "
                            "per extractor: drop out= (each goes to its protocol's file) or set metrics.extractors=null "
                            "metrics.extractor=NAME")  # fmt: skip


def from_checkpoint(cfg: DictConfig, out: Path | None) -> tuple[list[dict], Path, bool]:
    """The records (one per extractor), the run folder they belong to, and whether the first is the run's own
    protocol."""
    from genbench.metrics import plan_model_evaluations, run_model_evaluations
    from genbench.metrics.settings import is_own_protocol, metrics_for_run, sampler_for_run
    from genbench.models import load_checkpoint

    ckpt = Path(cfg.ckpt).expanduser().resolve()
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    if out is None:
        check_store(run_dir)
    model, run_cfg = load_checkpoint(ckpt, map_location="cpu")
    # a checkpoint put into another run's folder would be scored into that run's metrics/
    check_checkpoint_belongs(ckpt, OmegaConf.to_container(run_cfg), run_dir)
    config = metrics_for_run(run_cfg.get("metrics"), cfg.metrics)
    if out is not None:
        check_one_score(config)
    settings = sampler_for_run(model, run_cfg.get("sampler"), cfg.sampler)
    own = is_own_protocol(model, run_cfg, config, settings)
    data_cfg = OmegaConf.merge(run_cfg.data, _data_overrides())  # the data the model was trained on
    log.info("checkpoint %s: %s model, data %s", ckpt, model.family, data_cfg.get("source"))
    plans = plan_model_evaluations(model, config, _datamodule(data_cfg), settings)
    for i, plan in enumerate(plans):
        protocol = plan.protocol.id
        if out is not None:
            check_destination(out, protocol)
        where = out or score_dir(run_dir) / f"{protocol}.json"
        whose = "the run's own: also metrics.json" if own and i == 0 else "not the run's own: metrics.json is left as it is"
        log.info("protocol %s (%s), the score will go to %s", protocol, whose, where)
    records = run_model_evaluations(model, plans)
    for record in records:
        record.update(ckpt=str(ckpt), checkpoint_sha256=getattr(model, "checkpoint_sha256", None))
    return records, run_dir, own


def from_samples(cfg: DictConfig, out: Path | None) -> tuple[list[dict], Path, bool]:
    """The records of bare images (one per extractor), their folder or .npz, and False (they have no protocol of
    their own)."""
    from genbench.imageio import check_not_constant, load_images
    from genbench.metrics.settings import given

    if given("sampler"):
        raise GenbenchError(f"samples= scores images as they are: sampler settings do not apply ({' '.join(given('sampler'))})")
    config = MetricsConfig.from_cfg(cfg.metrics)
    samples = Path(cfg.samples).expanduser().resolve()
    if out is None:
        check_store(samples)
    fake, conversions = load_images(samples)  # logged, recorded in the score and, where it matters, in its protocol
    check_not_constant(fake, str(samples))  # said before any reference is loaded (score_images checks it again)
    if len(fake) > config.n_samples:
        log.info("scoring the first %d of %d images in %s (metrics.n_samples)", config.n_samples, len(fake), samples)
        fake = fake[: config.n_samples]
    elif len(fake) < config.n_samples:
        log.warning("%s holds %d images, fewer than metrics.n_samples=%d: scoring all of them", samples, len(fake),
                    config.n_samples)  # fmt: skip
    if cfg.reference is not None:
        # No training set is known for bare images, so memorization stays null.
        plans = plan_evaluations(config, images_from_path(cfg.reference), len(fake), fake_shape=fake.shape[1:],
                                 fake_conversions=conversions)  # fmt: skip
    else:
        datamodule = _datamodule(cfg.data)
        plans = plan_evaluations(
            config,
            images_from_datamodule(datamodule, config.reference_split, config.n_reference),
            len(fake),
            train=images_from_datamodule(datamodule, "train"),
            heldout=images_from_datamodule(datamodule, config.heldout_split),
            fake_shape=fake.shape[1:],
            fake_conversions=conversions,
        )
    for plan in plans:
        if out is not None:
            check_destination(out, plan.protocol.id)
        log.info("protocol %s, the score will go to %s", plan.protocol.id, out or score_dir(samples) / f"{plan.protocol.id}.json")
    return [score_images(plan, fake) | {"samples": str(samples)} for plan in plans], samples, False


def evaluate(cfg: DictConfig) -> dict:
    check_config(cfg, "evaluate")  # every key's type and range (genbench.schema), before anything is loaded
    if (cfg.ckpt is None) == (cfg.samples is None):
        raise GenbenchError("give exactly one of ckpt=PATH (a checkpoint) or samples=PATH (a folder of PNGs or an .npz)")
    if cfg.reference is not None and cfg.ckpt is not None:
        raise GenbenchError("reference=PATH goes with samples=PATH; a checkpoint is scored against its own data")
    out = Path(cfg.out).expanduser().resolve() if cfg.out is not None else None
    if out is not None and out.is_dir():
        raise GenbenchError(f"out={cfg.out} is a folder; expected the path of a .json file to write the score to")
    if out is not None:
        check_writable(out.parent)  # an unwritable out= fails before the evaluation, not after it
        check_one_score(MetricsConfig.from_cfg(cfg.metrics))
    records, target, own = from_checkpoint(cfg, out) if cfg.ckpt is not None else from_samples(cfg, out)
    for i, record in enumerate(records):
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_json(out, record)
            log.info("wrote %s", out)
            written = [out]
        else:
            written = write_score(target, record, own=own and i == 0)  # logs each file it writes
        print(score_summary(record, written), flush=True)  # the full record is in the file(s)
    return records[0]


main = hydra_entry(evaluate, "eval")

if __name__ == "__main__":
    main()
