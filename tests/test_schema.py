"""One schema for every config key (genbench.schema): every shipped config passes it and has no leaf without a rule,
and every leaf refuses wrong types, out-of-range values, NaN/inf, empty text and unknown keys with one line naming
the key (a property test over the schema, through the preflight functions), plus a few real command lines.
"""

from __future__ import annotations

import collections.abc
import copy
import math
import types
import typing
from pathlib import Path

import pytest
from annotated_types import Interval
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import CONF_DIR, assert_contract_error, compose_train, run_cli_batch
from genbench.errors import GenbenchError
from genbench.schema.commands import check_config, leaves
from genbench.training.preflight import check_train_config

FAMILIES = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
NEEDS = {"hf": ["data.name=some/dataset"], "imagefolder": ["data.root=/some/folder"]}  # their `???` keys


def compose(config: str, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None, job_name="test"):
        return hydra_compose(config, overrides=list(overrides))


def train_configs():
    """Every choice of every train group on top of the defaults, and every experiment with every family."""
    run_dir = Path("/tmp/genbench-schema/runs/default/run")
    chosen = [[f"model={f}"] for f in FAMILIES] + [[f"model={f}", "model/size=paper"] for f in FAMILIES]
    for group in ("data", "hardware", "logger", "sampler", "metrics"):
        for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
            chosen.append([f"{group}={option}", *NEEDS.get(option, [])])
    chosen += [[f"experiment={e}", f"model={f}"] for e in EXPERIMENTS for f in FAMILIES]
    return [(" ".join(c), compose_train(run_dir, *c)) for c in chosen]


COMMANDS = {
    "sample": ["ckpt=/some/run/checkpoints/last.ckpt", "out=/some/out"],
    "eval": ["ckpt=/some/run/checkpoints/last.ckpt", "paths.output_dir=/some/run"],
    "report": ["sweep=/some/sweep", "out=/some/out", "paths.output_dir=/some/out"],
    "stylize": ["content=/some/content.jpg", "style=/some/style.jpg", "out=/some/out.png"],
}
COMMAND_OF = {"sample": "sample", "eval": "evaluate", "report": "report", "stylize": "stylize"}


def test_every_shipped_config_passes_and_every_leaf_has_a_rule():
    configs = train_configs()
    assert len(configs) > 30
    for name, cfg in configs:
        check_config(cfg, "train")
        undescribed = [k for k, rule in leaves(cfg, "train").items() if rule is None]
        assert not undescribed, f"{name}: keys without a rule in genbench.schema: {undescribed}"
        open_ended = [k for k, rule in leaves(cfg, "train").items() if rule == "open"]
        assert all(k.startswith("logger.extra") for k in open_ended), open_ended  # only another library's logger
    for config, args in COMMANDS.items():
        cfg = compose(config, *args)
        check_config(cfg, COMMAND_OF[config])
        undescribed = [k for k, rule in leaves(cfg, COMMAND_OF[config]).items() if rule is None]
        assert not undescribed, f"{config}: keys without a rule: {undescribed}"


# ------------------------------------------------------------------ the property test
def _members(annotation) -> list:
    """The alternatives of a rule (through Optional, unions and Annotated), each as (type, metadata)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *meta = typing.get_args(annotation)
        return [(t, m + meta) for t, m in _members(inner)]
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [(annotation, [])]


def _bad_values(rule) -> list:
    """Values ``rule`` must refuse: never finite-less numbers or empty text; the wrong kind; just out of range."""
    bad = [math.nan, math.inf, -math.inf, "", {"zz_unknown": 1}]
    members = _members(rule.annotation)
    members = [(t, m + list(rule.metadata)) for t, m in members] if len(members) == 1 else members
    kinds = [t for t, _ in members]
    literal_values = [v for t, _ in members if typing.get_origin(t) is typing.Literal for v in typing.get_args(t)]
    takes_text = str in kinds or any(isinstance(v, str) for v in literal_values)
    takes_list = any(t in (list, tuple) or typing.get_origin(t) in (list, tuple, collections.abc.Sequence) for t in kinds)
    if not takes_text:
        bad.append("not_a_value")
    if literal_values and str not in kinds:
        bad.append("not_a_choice")
    if not takes_list:
        bad.append([1, 2])
    numeric = [(t, m) for t, m in members if t in (int, float)]
    if len(numeric) == 1:
        kind, meta = numeric[0]
        step = 1 if kind is int else 0.5
        for m in meta:
            bounds = (m.ge, m.gt, m.le, m.lt) if isinstance(m, Interval) else (
                getattr(m, "ge", None), getattr(m, "gt", None), getattr(m, "le", None), getattr(m, "lt", None))
            ge, gt, le, lt = bounds
            bad += [b for b in (None if ge is None else ge - step, gt, None if le is None else le + step, lt)
                    if b is not None and b not in literal_values]
        if kind is int:
            bad.append(2.5)
    if bool in kinds and int not in kinds:
        bad.append(1)
    return bad


def _cases(command: str, cfg) -> list[tuple[str, object]]:
    found = leaves(cfg, command)
    cases = []
    for key, rule in found.items():
        if rule == "open":
            continue
        cases += [(key, value) for value in _bad_values(rule)]
        cases.append((f"{key.rsplit('.', 1)[0]}.zz_unknown" if "." in key else "zz_unknown", 1))
    return cases


def _checked(command: str):
    if command == "train":
        return check_train_config
    return lambda cfg: check_config(cfg, command)


@pytest.fixture(scope="module")
def bases():
    run_dir = Path("/tmp/genbench-schema/runs/default/run")
    found = {f"train:{f}": ("train", compose_train(run_dir, f"model={f}")) for f in FAMILIES}
    found |= {config: (COMMAND_OF[config], compose(config, *args)) for config, args in COMMANDS.items()}
    return {name: (command, cfg, _cases(command, cfg)) for name, (command, cfg) in found.items()}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_leaf_refuses_bad_values_in_one_line_naming_the_key(bases, data):
    name = data.draw(st.sampled_from(sorted(bases)), label="config")
    command, base, cases = bases[name]
    key, value = data.draw(st.sampled_from(cases), label="key and value")
    cfg = copy.deepcopy(base)
    OmegaConf.update(cfg, key.replace("[", ".").replace("]", ""), value, force_add=True, merge=False)
    with pytest.raises(GenbenchError) as caught:
        _checked(command)(cfg)
    line = str(caught.value)
    assert "\n" not in line
    shown = key.split("[")[0]
    assert shown in line or shown.rsplit(".", 1)[-1] in line, f"{key}={value!r}: {line}"


def test_every_family_config_checks_in_milliseconds(bases):
    """The property test goes through the preflight functions: a bad key fails before anything is built."""
    import time

    command, cfg, _ = bases["train:" + FAMILIES[0]]
    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, "budget.max_steps", 2.5, merge=False)
    start = time.perf_counter()
    with pytest.raises(GenbenchError, match="budget.max_steps=2.5"):
        check_train_config(cfg)
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------ the wiring, as a user types it
CLI_CASES = {
    "fractional_steps": ("train", ["budget.max_steps=2.5"], ["budget.max_steps=2.5", "integer"]),
    "negative_beta": ("train", ["model=vae", "model.beta=-1"], ["model.beta=-1"]),
    "zero_latent": ("train", ["model=vae", "model.net.latent_dim=0"], ["model.net.latent_dim=0"]),
    "dropout_above_one": ("train", ["model.label_dropout=1.5"], ["model.label_dropout=1.5"]),
    "nan_guidance": ("train", ["sampler.guidance_scale=nan"], ["sampler.guidance_scale=nan", "finite"]),
    "negative_fid_interval": ("train", ["callbacks.fid.every_n_steps=-1"], ["callbacks.fid.every_n_steps=-1"]),
    "unknown_top_level": ("train", ["+foo=bar"], ["foo", "unknown key"]),
    "nearest_name": ("train", ["+model.net.base_chanels=3"], ["model.net.base_chanels", "base_channels"]),
    "infinite_minutes": ("train", ["budget.max_minutes=inf"], ["budget.max_minutes=inf", "finite"]),
    "nan_minutes": ("train", ["budget.max_minutes=nan"], ["budget.max_minutes=nan", "finite"]),
    "flops_suffix": ("train", ["budget.max_flops=20t"], ["budget.max_flops=20t", "suffixes K, M, G, T, P"]),
    "run_outside_runs": ("train", ["name=../../x"], ["name=", "../../x"]),
    "empty_name": ("train", ["name="], ["name="]),
    "unknown_schedule": ("train", ["model.path.kind=foo"], ["model.path.kind=foo", "cosine"]),
    "x0_prediction": ("train", ["model.path.prediction=x0"], ["model.path.prediction=x0", "eps"]),
    "zero_timesteps": ("train", ["model.path.num_timesteps=0"], ["model.path.num_timesteps=0"]),
    "zero_width": ("train", ["model.net.base_channels=0"], ["model.net.base_channels=0"]),
    "sample_nan_guidance": ("sample", ["ckpt=/nonexistent/last.ckpt", "out={root}/sample_out",
                                       "sampler.guidance_scale=nan"], ["sampler.guidance_scale=nan"]),
    "evaluate_nan_guidance": ("evaluate", ["ckpt=/nonexistent/last.ckpt", "sampler.guidance_scale=nan"],
                              ["sampler.guidance_scale=nan"]),
    "report_zero_rows": ("report", ["sweep={root}", "out={root}/report_out", "report.grid_rows=0"],
                         ["report.grid_rows=0"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema_cli")
    jobs = {}
    for name, (module, args, _) in CLI_CASES.items():
        extra = [f"paths.runs_dir={root / 'runs' / name}"] if module == "train" else []
        jobs[name] = (module, [*(a.format(root=root) for a in args), *extra])
    return root, run_cli_batch(jobs, root / "logs")


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_keys_on_the_command_line_are_one_line_and_write_nothing(cli_outcomes, case):
    root, results = cli_outcomes
    assert_contract_error(results[case], *CLI_CASES[case][2])
    assert "Traceback" not in results[case].stderr
    name = Path(CLI_CASES[case][1][0].split("=")[-1]).name if case == "run_outside_runs" else case
    written = [p for p in root.rglob("*") if p.name in (case, name, "sample_out", "report_out")]
    assert written == [], f"{case} left {written}"
