"""``python -m genbench.train [overrides]``: one run (or a sweep with ``-m``) into a run folder.

Reads top to bottom: checks (preflight), the run folder claimed (one process at a time, one training config:
training/identity.py), then data module, model, callbacks, loggers, trainer, fit, record, evaluate. Nothing is
written to the run folder before the command is accepted and its data and model are built.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.model_helpers import is_overridden

from genbench.cli import hydra_entry
from genbench.data.order import rank_share
from genbench.errors import GenbenchError, user_error_message
from genbench.metrics.config import check_counts, check_metrics
from genbench.sampling import as_sampler_kwargs, sampler_settings
from genbench.metrics.store import write_score
from genbench.models import Diverged, build_model, file_sha256
from genbench.training.budget import Budget, BudgetCallback
from genbench.training.callbacks import RunRecordCallback, instantiate_callbacks
from genbench.training.checkpoint_io import AtomicCheckpointIO, PeriodicCheckpoint, readable_checkpoint
from genbench.training.csv_logger import RunCSVLogger
from genbench.models.flops import training_flops
from genbench.training.identity import check_checkpoint_belongs, check_same_training, checkpoint_config
from genbench.training.preflight import check_train_config
from genbench.training.record import RUN_JSON, git_commit, read_json
from genbench.training.run_folder import RunFolder, check_run_name
from genbench.training.speed import speed_switches
from genbench.training.slurm import cluster_hooks
from genbench.training.wandb_media import WandbMediaCallback

log = logging.getLogger("genbench.train")
BUDGET_KEYS = ("max_steps", "max_images", "max_minutes", "max_flops")
METRICS_JSON = "metrics.json"
RUN_KEYS = ("checkpoint_every_n_steps", "checkpoint_every_n_minutes")  # ours, not Trainer arguments


def resolve_budget(cfg: DictConfig) -> None:
    """A budget key given on the command line replaces the default budget, so `budget.max_minutes=2` just works."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    chosen = [k for k in BUDGET_KEYS if f"budget.{k}" in given and cfg.budget[k] is not None]
    if chosen:
        with open_dict(cfg):
            for key in BUDGET_KEYS:
                if key not in chosen:
                    cfg.budget[key] = None


def resume_path(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: last.ckpt, or previous.ckpt when last.ckpt is damaged (logged)."""
    if cfg.resume in ("auto", "must"):
        found = readable_checkpoint(run_dir / "checkpoints")
        if found is None and cfg.resume == "must":
            raise GenbenchError(f"resume=must but {run_dir / 'checkpoints' / 'last.ckpt'} does not exist")
        if found is not None:  # another run's checkpoint put here would fail to load after the folder is rewritten
            check_checkpoint_belongs(found, checkpoint_config(found), run_dir, OmegaConf.to_container(cfg, resolve=True))
        return found
    if cfg.resume == "never":
        if (run_dir / RUN_JSON).exists():
            raise GenbenchError(f"resume=never but {run_dir} already holds a run; choose another name/seed or remove it")
        return None
    raise GenbenchError(f"resume={cfg.resume}; expected auto, must or never")


def world_size(hw: DictConfig) -> int:
    """The number of training processes ``hardware`` asks for (devices per node times nodes), by Lightning's rules
    for reading ``devices``; known before anything is built, so a global batch they cannot share is refused early."""
    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

    accelerator = CPUAccelerator if hw.accelerator == "cpu" else CUDAAccelerator
    devices = OmegaConf.to_container(hw.devices) if isinstance(hw.devices, ListConfig) else hw.devices
    if devices == "auto":
        devices = accelerator.auto_device_count()
    parsed = accelerator.parse_devices(devices)
    per_node = len(parsed) if isinstance(parsed, (list, tuple)) else int(parsed)
    return per_node * int(hw.get("num_nodes", 1))


def ddp_strategy(strategy: str, model) -> str:
    """``hardware.strategy``, with DDP told to expect parameters without gradients when the model says it leaves
    some out of a backward pass (``leaves_parameters_unused``).

    A model with manual optimization (the GAN: a discriminator update, then a generator update through the
    discriminator), or one trained in stages (latent diffusion: the autoencoder, then the denoiser), leaves some
    parameters out of each backward pass, which DDP refuses unless it searches for them; Lightning registers that
    variant of each DDP strategy as ``<name>_find_unused_parameters_true``.
    """
    from pytorch_lightning.strategies import StrategyRegistry

    variant = f"{strategy}_find_unused_parameters_true"
    if model.leaves_parameters_unused() and variant in StrategyRegistry.available_strategies():
        return variant
    return strategy


def callback_context(cfg: DictConfig, run_dir: Path, budget, sampler: dict) -> dict:
    """What a callback of conf/callbacks may ask for by keyword (genbench.schema refuses these as config keys)."""
    return {"run_dir": run_dir, "run_seed": cfg.seed, "budget": budget, "sampler": sampler, "sampler_kwargs": sampler,
            "metrics_cfg": cfg.metrics}  # fmt: skip


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, model) -> pl.Trainer:
    loggers = [RunCSVLogger(str(run_dir))]  # run_dir/metrics.csv, always on
    loggers += [instantiate(extra) for extra in cfg.logger.extra]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in RUN_KEYS:
        trainer_cfg.pop(key)
    hw = cfg.hardware
    # on SLURM: ranks from its tasks, and submitit alone owns the requeue signal (training/slurm.py)
    callbacks, plugins = cluster_hooks(run_dir, callbacks, [AtomicCheckpointIO()])
    trainer = instantiate(
        trainer_cfg, accelerator=hw.accelerator, devices=hw.devices, num_nodes=hw.get("num_nodes", 1),
        precision=hw.precision, strategy=ddp_strategy(hw.strategy, model), callbacks=callbacks, logger=loggers,
        plugins=plugins, default_root_dir=str(run_dir),
    )  # fmt: skip
    if trainer.world_size != world_size(hw):  # the count preflight checked data.batch_size against
        raise GenbenchError(f"hardware gives {trainer.world_size} training processes, not the {world_size(hw)} "
                            "expected from hardware.devices and hardware.num_nodes")  # fmt: skip
    return trainer


def preflight(cfg: DictConfig) -> Budget:
    """Every check that needs nothing loaded, built or written: bad input ends here (training/preflight.py)."""
    check_train_config(cfg)
    metrics = check_metrics(cfg.metrics)  # metrics.* (the extractor's name too) fail now, not after training
    if cfg.evaluate:  # counts the score cannot work with, as far as the config tells them before the data loads
        check_counts(metrics, metrics.n_reference, metrics.n_samples)
    if "spawn" in str(cfg.hardware.strategy):
        # The spawn launcher pickles the model into each new process; torch refuses to pickle parametrized modules
        # (the GAN's spectral norm), so only some families would run. One launcher that works for all instead.
        raise GenbenchError(f"hardware.strategy={cfg.hardware.strategy} is not supported: it pickles the model, "
                            "which spectral-norm layers forbid; use hardware.strategy=ddp (one process per rank, "
                            "started by Lightning, srun or torchrun)")  # fmt: skip
    rank_share(int(cfg.data.batch_size), world_size(cfg.hardware))  # data.batch_size is the global batch
    return Budget(**cfg.budget)


def finished_record(cfg: DictConfig, run_dir: Path, budget: Budget) -> dict | None:
    """The record of this run if it completed a budget at least as large as ``budget`` (and was scored, when asked)."""
    path = run_dir / RUN_JSON
    if cfg.resume == "never" or not path.exists():
        return None
    record = read_json(path, what="run record")
    if not isinstance(record, dict):
        raise GenbenchError(f"{path} holds no run record (a JSON object); repair or remove it")
    if record.get("status") != "completed":
        return None
    spent = BudgetCallback(budget)  # the budget's own rule, applied to the run's final counts
    spent.load_state_dict({"steps": record.get("steps", 0), "images": record.get("images_seen", 0),
                           "train_seconds": record.get("train_seconds", 0.0), "flops": record.get("train_flops")})  # fmt: skip
    return record if spent.exhausted() and scored(cfg, run_dir) else None


def scored(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether a completed run holds every score it asks for: metrics.json, and with ``metrics.extractors`` a
    score of the same number of images under each further extractor (one added later is scored then)."""
    if not cfg.evaluate:
        return True
    if not (run_dir / METRICS_JSON).exists():
        return False
    from genbench.metrics.extractors import AUTO, check_name
    from genbench.metrics.store import read_scores

    config = check_metrics(cfg.metrics)
    _, scores = read_scores(run_dir)
    have = {(s.get("extractor"), s.get("n_fake")) for s in scores}
    wanted = [check_name(name) for name in config.extractor_names()[1:] if name != AUTO]
    return all((name, config.n_samples) in have for name in wanted)


def diverged_message(exc: Diverged, record: dict, run_dir: Path) -> str:
    """The command's last line: what went bad at which step, where training stopped, and what was kept.

    The loss is checked every ``trainer.log_every_n_steps`` batches (one host sync each), so training may have gone
    past the step that went bad; both steps are named, as run.json records them (``diverged_at_step``, ``steps``).
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been saved before it"
    return (f"{exc}; training stopped at step {record.get('steps')} (run.json: status diverged, diverged_at_step "
            f"{exc.step}); {kept}")  # fmt: skip


def train(cfg: DictConfig) -> dict:
    """Checks, then the run folder claimed (one process at a time, one training config), then :func:`fit`."""
    composed = copy.deepcopy(cfg)  # as Hydra composed it, for .hydra/config.yaml
    check_run_name(cfg.name)  # the CLI refuses it earlier, as Hydra reads the run path (conf/hydra/default.yaml)
    run_dir = Path(cfg.paths.output_dir)
    # DDP ranks other than zero rerun this command; rank zero alone locks and writes the run folder.
    with RunFolder(run_dir, owner=rank_zero_only.rank == 0) as folder:
        resolve_budget(cfg)
        budget = preflight(cfg)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)  # reads nothing yet; its constructor checks the data keys
        check_same_training(run_dir, cfg)  # training/identity.py: which keys make a run
        if (done := finished_record(cfg, run_dir, budget)) is not None:
            log.info("%s already completed its budget (%s); nothing to do", run_dir, done["stop_reason"])
            return done
        return fit(cfg, run_dir, budget, datamodule, folder, composed)


def train_flops(cfg: DictConfig, datamodule, model, budget: Budget):
    """The model's training FLOPs per image, counted once per session on a twin (genbench.training.flops). A model
    that cannot be counted trains without them (run.json's FLOP fields are null), unless the budget is in FLOPs."""
    try:
        return training_flops(cfg.model, datamodule.image_shape, datamodule.num_classes, datamodule.class_names)
    except Exception as exc:  # noqa: BLE001 - a family whose step cannot be counted: said, not fatal
        if budget.max_flops is not None:
            raise GenbenchError(f"budget.max_flops needs the {model.family} model's training FLOPs, which could not "
                                f"be counted ({type(exc).__name__}: {exc}); set another budget") from exc  # fmt: skip
        log.warning("the %s model's training FLOPs could not be counted (%s: %s); run.json records none",
                    model.family, type(exc).__name__, exc)  # fmt: skip
        return None


def fit(cfg: DictConfig, run_dir: Path, budget: Budget, datamodule, folder: RunFolder, composed: DictConfig) -> dict:
    """Load the data, build the model, commit the run folder, then train, record and (when asked) evaluate."""
    ckpt_path = resume_path(cfg, run_dir)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg.model, datamodule.image_shape, datamodule.num_classes, datamodule.class_names)
    model.configure_speed(**speed_switches(cfg.hardware))  # hardware.compile, channels_last, fused_optimizer
    sampler = as_sampler_kwargs(cfg.sampler)  # every key (heun's sigma_max too): the model keeps what applies
    sampler_settings(model, sampler)  # a sampler the model cannot use is refused before the folder is written
    model.log_every_n_steps = cfg.trainer.log_every_n_steps
    model.run_meta = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "data": {"image_shape": list(datamodule.image_shape), "num_classes": model.num_classes,
                 "class_names": model.class_names, "fingerprint": datamodule.fingerprint},
    }  # fmt: skip
    flops = train_flops(cfg, datamodule, model, budget)
    folder.commit(cfg, composed)  # config.yaml, .hydra/, train.log: the folder is written from here on
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("ema."))
    log.info("%s: %.2fM parameters, budget %s, run folder %s", model.family, n_params / 1e6, budget, run_dir)
    if flops is not None:
        log.info("training FLOPs per image: %s", ", ".join(f"{k} {v:.4g}" for k, v in flops.per_image.items()))

    budget_cb = BudgetCallback(budget, flops)
    record_cb = RunRecordCallback(run_dir, cfg.seed, budget_cb, {"run_dir": str(run_dir), "git_commit": git_commit(),
                                                                 "budget": OmegaConf.to_container(cfg.budget)})  # fmt: skip
    callbacks = [  # what every run has: its budget, record and checkpoints; then the ones conf/callbacks names
        budget_cb,
        record_cb,
        PeriodicCheckpoint(run_dir / "checkpoints", budget_cb, cfg.trainer.checkpoint_every_n_steps,
                           cfg.trainer.checkpoint_every_n_minutes),
        *instantiate_callbacks(cfg.callbacks, **callback_context(cfg, run_dir, budget_cb, sampler)),
    ]  # fmt: skip
    trainer = build_trainer(cfg, run_dir, callbacks, model)
    # logger=wandb only: config, sample grids and the final records on the W&B run (None without a WandbLogger)
    wandb_media = WandbMediaCallback.attach(trainer, run_dir, model.run_meta["config"])
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
        # the final state; refused (Diverged) for non-finite weights, which leaves the last good checkpoint
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    except Diverged as exc:
        record = record_cb.finish(trainer, model, "diverged", str(exc), diverged_at_step=exc.step)
        raise Diverged(diverged_message(exc, record, run_dir), exc.step) from exc
    except BaseException as exc:  # before training started, an existing record stays as it was
        reason = user_error_message(exc) or f"{type(exc).__name__}: {exc}"  # a full disk: "...: no space left on device"
        try:
            record_cb.finish(trainer, model, "failed", reason)
        except OSError as record_exc:  # the disk may still refuse; the error to report is the first one
            log.error("could not record the failure in %s: %s", record_cb.path, record_exc)
        raise
    test_metrics = {}
    if is_overridden("test_step", model):  # e.g. the VAE's ELBO and bits/dim on the test split, over every rank
        results = trainer.test(model, datamodule=datamodule, verbose=False)
        test_metrics = {k: round(float(v), 5) for k, v in (results[0] if results else {}).items()}
    record = record_cb.finish(trainer, model, "completed", budget_cb.stop_reason or "data exhausted", test=test_metrics)
    if not trainer.is_global_zero:
        # Records and evaluation are rank 0's alone; the other ranks have nothing left to do and end here rather
        # than wait at a barrier, which would time out (30 min) during a long evaluation.
        return record
    log.info("%s done: %d steps, %d images, %.1f img/s", model.family, record["steps"], record["images_seen"],
             record["img_per_s"] or 0)  # fmt: skip
    if cfg.evaluate:
        from genbench.metrics import plan_model_evaluations, run_model_evaluations

        # one score per extractor (metrics.extractors), of one set of samples; the first is the run's own
        scores = run_model_evaluations(model, plan_model_evaluations(model, cfg.metrics, datamodule, sampler))
        last = run_dir / "checkpoints" / "last.ckpt"
        for i, metrics in enumerate(scores):
            metrics.update(ckpt=str(last), checkpoint_sha256=file_sha256(last))
            write_score(run_dir, metrics, own=i == 0)  # metrics.json (the first) and metrics/<protocol>.json
        record["metrics"] = scores[0]
        record["other_metrics"] = scores[1:]
    if wandb_media is not None:
        wandb_media.finish(record)
    return record


main = hydra_entry(train, config_name="train")

if __name__ == "__main__":
    main()
