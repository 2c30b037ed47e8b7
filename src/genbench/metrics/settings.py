"""Which ``metrics.*`` and ``sampler.*`` a command on a checkpoint uses: the run's own, with the command line on top.

A run's config (inside its checkpoint) defines its own protocol; ``evaluate ckpt=`` and ``sample ckpt=`` start from
it, not from their own config files' defaults. ``sampler=ddpm`` (choosing another config of the group) replaces the
run's sampler; ``sampler.steps=10`` changes that one key of it. ``metrics.batch_size``, ``metrics.device`` and
``metrics.cache_dir`` are the machine's, so they always come from the command (they never change a score).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from genbench.errors import GenbenchError
from genbench.metrics.config import MACHINE_KEYS, MetricsConfig
from genbench.metrics.evaluator import model_sampler


def task_overrides() -> list[str]:
    """The command line's overrides (empty when not under Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def given(group: str, overrides: list[str] | None = None) -> list[str]:
    """The overrides that set ``group`` or one of its keys (``sampler=ddpm``, ``sampler.steps=10``)."""
    overrides = task_overrides() if overrides is None else overrides
    key = lambda o: o.split("=", 1)[0].lstrip("+~")  # noqa: E731
    return [o for o in overrides if key(o) == group or key(o).startswith(group + ".")]


def with_run_defaults(run_node, command_node: DictConfig, group: str, overrides: list[str] | None = None) -> DictConfig:
    """``group``'s settings for a command on a run: the run's own, except what the command line sets."""
    chosen = given(group, overrides)
    if run_node is None or any("." not in o.split("=", 1)[0] for o in chosen):
        return command_node  # an old run without the group, or `group=NAME`: the command's whole group
    merged = OmegaConf.create(OmegaConf.to_container(run_node, resolve=True))
    for override in chosen:
        dotted = override.split("=", 1)[0].lstrip("+~")[len(group) + 1 :]
        OmegaConf.update(merged, dotted, OmegaConf.select(command_node, dotted), force_add=True)
    return merged


def metrics_for_run(run_metrics, command_metrics: DictConfig, overrides: list[str] | None = None) -> MetricsConfig:
    """The checked ``metrics.*`` of an evaluation of a run (see the module docstring)."""
    merged = with_run_defaults(run_metrics, command_metrics, "metrics", overrides)
    values = OmegaConf.to_container(merged, resolve=True)
    values |= {key: OmegaConf.select(command_metrics, key) for key in MACHINE_KEYS if key in command_metrics}
    return MetricsConfig.from_cfg(values)


def sampler_for_run(model, run_sampler, command_sampler: DictConfig, overrides: list[str] | None = None) -> dict | None:
    """The sampler settings ``model`` samples with (None: it takes none), checked before any sampling.

    A sampler given on the command line for a model that takes none is an error, not something to ignore.
    """
    chosen = given("sampler", overrides)
    settings = model_sampler(model, with_run_defaults(run_sampler, command_sampler, "sampler", overrides))
    if settings is None and chosen:
        raise GenbenchError(f"the {model.family} model takes no sampler (it samples in one pass): drop {' '.join(chosen)}")
    return settings


def is_own_protocol(model, run_cfg, config: MetricsConfig, settings: dict | None) -> bool:
    """Whether ``config`` and ``settings`` are the run's own (its training config's): then the score is metrics.json."""
    if run_cfg.get("metrics") is None:
        return False
    try:
        own_config = MetricsConfig.from_cfg(run_cfg.metrics)
        own_settings = model_sampler(model, run_cfg.get("sampler"))
    except GenbenchError:  # the run's own settings no longer check out: nothing here is its own protocol
        return False
    return own_config.protocol_settings() == config.protocol_settings() and own_settings == settings
