"""The speed switches of the ``hardware`` group (training/speed.py, GenerativeModule.configure_speed): each one changes
how fast training runs, never what it trains, and run.json says which were on.

Real inductor compilation of even the tiny nets takes 30-60 s cold on two CPU cores, so the compile tests swap the
backend for ``aot_eager`` (Dynamo's graph capture and AOTAutograd's joint graph, without inductor's code generation)
or for a stand-in that sleeps like a compiler; what they test (the compiled-view plumbing, the warm-up that is undone,
the budget's clock) does not depend on the backend.
"""

from __future__ import annotations

import copy
import functools
import json
import time

import pytest
import torch
from conftest import FAMILIES, compose_train, requires_fmnist, tiny_overrides, train_run

from genbench.errors import GenbenchError
from genbench.models import build_model
from genbench.training import speed
from genbench.training.preflight import check_train_config

CLASSES = [f"c{i}" for i in range(10)]


def tiny_model(tmp_path, family: str, *overrides: str):
    cfg = compose_train(tmp_path / "run", *tiny_overrides(family), *overrides)
    return build_model(cfg.model, (1, 28, 28), 10, CLASSES)


def training_views(model) -> dict[str, torch.nn.Module]:
    return dict(model._training_views)


def net_inputs(name: str, net: torch.nn.Module, batch: int = 4) -> tuple:
    torch.manual_seed(1)
    labels = torch.randint(0, 10, (batch,)) if getattr(net, "num_classes", None) else None
    if name == "train_generator":
        return torch.randn(batch, net.latent_dim), labels
    # what the network takes: images, or a latent space's states (a net records its input's channels and size)
    channels, size = getattr(net, "image_channels", 1), getattr(net, "image_size", 28)
    images = torch.rand(batch, channels, size, size) * 2 - 1
    if name == "train_net" and "UNet" in type(net).__name__:
        return images, torch.randint(0, 1000, (batch,)), labels
    return images, labels


# ---------------------------------------------------------------------- precision=auto
@pytest.mark.parametrize(("flags", "expected"), [({"avx512_bf16", "avx2"}, "bf16-mixed"), ({"amx_bf16"}, "bf16-mixed"),
                                                 ({"avx512f", "avx2"}, "32-true"), (set(), "32-true")])  # fmt: skip
def test_precision_auto_follows_the_cpu_flags(tmp_path, monkeypatch, flags, expected):
    monkeypatch.setattr(speed, "cpu_flags", lambda: flags)
    cfg = compose_train(tmp_path / "run", *tiny_overrides("vae"), "hardware.precision=auto")
    check_train_config(cfg)
    assert cfg.hardware.precision == expected


def test_precision_auto_resolves_as_this_machine_says_before_the_folder_is_written(tmp_path, fmnist):
    flags = set(open("/proc/cpuinfo").read().split()) if speed.cpu_flags() is not None else None
    expected = "bf16-mixed" if flags and flags & {"avx512_bf16", "amx_bf16"} else "32-true"
    if flags is None:
        expected = "bf16-mixed" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "32-true"
    record = train_run(tmp_path / "run", "vae", "hardware.precision=auto", "budget.max_steps=2")
    assert record["hardware"]["precision"] == record["speed"]["precision"] == expected
    assert f"precision: {expected}" in (tmp_path / "run" / "config.yaml").read_text()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["speed"]["precision"] == expected
    # the folder's identity holds the resolved value: the same command continues it, an explicit other one is refused
    train_run(tmp_path / "run", "vae", "hardware.precision=auto", "budget.max_steps=3")
    other = "32-true" if expected == "bf16-mixed" else "bf16-mixed"
    with pytest.raises(GenbenchError, match="hardware.precision"):
        train_run(tmp_path / "run", "vae", f"hardware.precision={other}", "budget.max_steps=4")


def test_bad_switch_values_and_unfusable_optimizers_fail_in_preflight(tmp_path):
    cfg = compose_train(tmp_path / "run", *tiny_overrides("vae"), "hardware.compile=maybe")
    with pytest.raises(GenbenchError, match=r"hardware.compile=maybe; expected true or false"):
        check_train_config(cfg)
    cfg = compose_train(tmp_path / "run", *tiny_overrides("vae"), "model.optimizer._target_=torch.optim.Rprop",
                        "hardware.fused_optimizer=true")  # fmt: skip
    with pytest.raises(GenbenchError, match="fused_optimizer=true"):
        check_train_config(cfg)
    cfg = compose_train(tmp_path / "run", *tiny_overrides("vae"), "model.optimizer._target_=torch.optim.Rprop",
                        "hardware.fused_optimizer=false")  # fmt: skip
    check_train_config(cfg)


@requires_fmnist
def test_bf16_with_gradient_clipping_trains_with_plain_optimizers(tmp_path):
    # Lightning's mixed-precision plugin stops a run that clips the gradients of a fused optimizer at its first step
    record = train_run(tmp_path / "run", "vae", "hardware.precision=bf16-mixed", "hardware.fused_optimizer=true",
                       "trainer.gradient_clip_val=1.0", "budget.max_steps=2")  # fmt: skip
    assert record["status"] == "completed" and record["steps"] == 2
    assert record["speed"]["fused_optimizer"] is False
    assert "fused_optimizer: false" in (tmp_path / "run" / "config.yaml").read_text()
    fp32 = compose_train(tmp_path / "other", *tiny_overrides("vae"), "hardware.precision=32-true",
                         "trainer.gradient_clip_val=1.0", "hardware.fused_optimizer=true")  # fmt: skip
    check_train_config(fp32)
    assert fp32.hardware.fused_optimizer is True  # fp32 clips fused optimizers fine: nothing to change


# ---------------------------------------------------------------------- channels_last
@pytest.mark.parametrize("family", FAMILIES)
def test_channels_last_gives_the_same_outputs_and_gradients(tmp_path, family):
    plain = tiny_model(tmp_path, family)
    nhwc = copy.deepcopy(plain)
    nhwc.configure_speed(channels_last=True)
    for name, net in training_views(plain).items():
        other = getattr(nhwc, name)
        conv = next(p for p in other.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last)
        net.train(), other.train()
        outputs = [n(*net_inputs(name, net)) for n in (net, other)]
        outputs = [o[0] if isinstance(o, tuple) else o for o in outputs]
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
        for o in outputs:
            o.float().square().mean().backward()
        for (pname, p), q in zip(net.named_parameters(), other.parameters()):
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-6, msg=f"{name}.{pname}")
    # the checkpoint is the same set of keys and loads both ways
    assert plain.state_dict().keys() == nhwc.state_dict().keys()
    plain.load_state_dict(nhwc.state_dict())


# ---------------------------------------------------------------------- fused optimizer
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_optimizers_step_like_the_unfused_ones(tmp_path, family):
    plain = tiny_model(tmp_path, family)
    fused = copy.deepcopy(plain)
    fused.configure_speed(fused_optimizer=True)
    runs = {}
    for model in (plain, fused):
        optimizers = model.configure_optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        assert all(bool(o.defaults.get("fused")) == model.speed["fused_optimizer"] for o in optimizers)
        torch.manual_seed(0)
        for _ in range(5):
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.grad = torch.randn_like(p)
                optimizer.step()
        runs[model.speed["fused_optimizer"]] = {k: v for k, v in model.state_dict().items() if not k.startswith("ema.")}
    for key, value in runs[False].items():
        torch.testing.assert_close(runs[True][key], value, rtol=1e-5, atol=1e-6, msg=key)


# ---------------------------------------------------------------------- compile
def sleepy_compile(seconds: float):
    """A stand-in for torch.compile whose first call takes ``seconds``, as compiling does, and computes as eager."""

    def compile_(net):
        first = [True]

        @functools.wraps(net.forward)
        def run(*args, **kwargs):
            if first[0]:
                first[0] = False
                time.sleep(seconds)
            return net(*args, **kwargs)

        return run

    return compile_


@requires_fmnist
@pytest.mark.parametrize("family", ["gan", "diffusion"])
def test_compile_time_stays_out_of_the_budget_and_the_warm_up_changes_nothing(tmp_path, monkeypatch, family):
    """The warm-up compiles on the first batch with the clock stopped, and is undone: no optimizer step, RNG states,
    batch-norm and spectral-norm buffers put back, so the weights equal those of a run without it (bit for bit)."""
    monkeypatch.setenv(speed.COMPILE_CACHE_ENV, str(tmp_path / "inductor"))
    steps = ("budget.max_steps=3", "callbacks.sample_grid.every_n_steps=null")
    plain = train_run(tmp_path / "plain", family, *steps)
    monkeypatch.setattr(torch, "compile", sleepy_compile(1.5))
    timed = train_run(tmp_path / "compiled", family, *steps, "hardware.compile=true")
    assert timed["speed"]["compile"] is True and timed["speed"]["compile_seconds"] >= 1.5
    assert timed["train_seconds"] < 1.5 and timed["images_seen"] == plain["images_seen"]
    weights = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for run in ("plain", "compiled")]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.equal(weights[1][key], value), key
    assert plain["speed"]["compile_seconds"] is None


@requires_fmnist
def test_compiled_training_matches_eager_losses_and_checkpoint_keys(tmp_path, monkeypatch):
    """A real torch.compile (Dynamo + AOTAutograd, aot_eager backend): same keys, near-equal losses and weights."""
    monkeypatch.setenv(speed.COMPILE_CACHE_ENV, str(tmp_path / "inductor"))
    steps = ("budget.max_steps=3", "callbacks.sample_grid.every_n_steps=null")
    eager = train_run(tmp_path / "eager", "vae", *steps)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net: real_compile(net, backend="aot_eager"))
    compiled = train_run(tmp_path / "compiled", "vae", *steps, "hardware.compile=true")
    assert compiled["speed"]["compile_seconds"] > 0
    losses = [[line.split(",") for line in (tmp_path / run / "metrics.csv").read_text().splitlines()]
              for run in ("eager", "compiled")]  # fmt: skip
    assert losses[0][0] == losses[1][0] and len(losses[0]) == len(losses[1]) > 1
    column = losses[0][0].index("train/loss")
    for a, b in zip(losses[0][1:], losses[1][1:]):
        if a[column]:
            assert float(b[column]) == pytest.approx(float(a[column]), rel=1e-4)
    weights = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for run in ("eager", "compiled")]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_runs_recorded_with_model_compile_still_build(tmp_path):
    """Checkpoints of runs before hardware.compile hold model.compile in their config; they still load."""
    from omegaconf import open_dict

    cfg = compose_train(tmp_path / "run", *tiny_overrides("gan"))
    with open_dict(cfg):
        cfg.model.compile = False
    model = build_model(cfg.model, (1, 28, 28), 10, CLASSES)
    assert model.speed["compile"] is False
