"""genbench against its peers on this machine: ``make bench`` (``make bench BENCH_ARGS=--tiny`` for the smoke test).

    .venv/bin/python benchmarks/bench.py [--tiny] [--rounds N] [--out results/bench] [--only NAME ...] [OVERRIDE ...]

OVERRIDEs are genbench's Hydra overrides of ``train`` (``hardware=gpu_bf16``, ``data.batch_size=256``): the
genbench side runs exactly that configuration (``hardware.precision=auto``: bf16 autocast where the machine has
native bf16, and sampling with ``sampler.precision=bf16-mixed`` there), and each peer the same widths and
batch in fp32, as its users run it by default and as issue 12 measured its targets; where genbench runs mixed, the
peer also runs under the same autocast and its figure and ratio are printed beside ("peer autocast"). Comparisons
(each in this one process, contenders alternating round by round, medians over rounds):

* ``<family>_train``, for every family with a training peer (``peers.TRAINING_PEERS``): genbench's Lightning run of
  ``model=<family>`` vs its peer at the same widths (diffusers ``UNet2DModel`` for the U-Net denoiser, a
  pytorch/examples-style DCGAN for the DCGAN), and vs a bare loop of genbench's own step
  (``lightning_overhead_<family>``);
* ``sample_<sampler>``: genbench's evaluator sampling (DDIM 20, DPM-Solver++(2M) 20) vs a diffusers scheduler loop
  over the same network, batch and labels;
* ``evaluate_<n>``: genbench's whole evaluation of n images (warm feature cache, memorization included) vs
  torch-fidelity's ``calculate_metrics`` (FID, KID, IS, precision/recall) on the same extractor, reference cached.

The result lands in ``<out>/<hardware slug>.json`` (``<slug>-tiny.json`` in tiny mode), stamped with the machine,
versions, git commit, date, mode and configuration; the issue's targets are printed beside the ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
import timing  # noqa: E402
from genbench.models import families  # noqa: E402

# The families with a training peer (peers.TRAINING_PEERS), in genbench's order of families (conf/model/).
TRAINED = [family for family in families() if family in peers.TRAINING_PEERS]
# Issue 12's targets: genbench / peer throughput ratio at least this much (evaluation: time <= peer's + 10%); a
# family's training target is its peer's, and a Lightning run may cost at most 5% over a bare loop of its step.
TARGETS = {
    **{f"{family}_train": peers.TRAINING_PEERS[family].ratio_target for family in TRAINED},
    **{f"lightning_overhead_{family}": 1 / 1.05 for family in TRAINED},
    "sample_ddim20": 2.0, "sample_dpmpp_2m20": 2.0, "evaluate_1000": 1 / 1.1, "evaluate_10000": 1 / 1.1,
}  # fmt: skip
# Issue 12's H100 targets for the paper-size network (--paper): genbench's own throughput (the peer's is context).
PAPER_TRAINED = [family for family in TRAINED if peers.TRAINING_PEERS[family].paper_target is not None]
PAPER_TARGETS = {**{f"{family}_train": peers.TRAINING_PEERS[family].paper_target for family in PAPER_TRAINED},
                 "sample_ddim50": 470.0}  # fmt: skip
FULL = {"rounds": 7, "train_warm": 2, "train_steps": 6, "gan_steps": 30, "sample_rounds": 3, "eval_rounds": 3,
        "sample_steps": 20, "samplers": ("ddim", "dpmpp_2m"), "sample_n": 128, "eval_n": (1000, 10000), "subset": None,
        "n_reference": None, "only": (*TRAINED, "sampling", "evaluation"), "overrides": (),
        "ratio_targets": TARGETS, "throughput_targets": {}}  # fmt: skip
TINY_SIZES = {"rounds": 1, "train_warm": 1, "train_steps": 1, "gan_steps": 1, "sample_rounds": 1, "eval_rounds": 1,
              "sample_steps": 2, "eval_n": (100,), "subset": 256, "batch_size": 16, "sample_n": 8,
              "n_reference": 300}  # fmt: skip
TINY = {**FULL, **TINY_SIZES}
# --paper: issue 12's GPU study, the DDPM CIFAR-10 U-Net (model/size=paper) at 32x32x3 and DDPM's batch of 128,
# trained and sampled with DDIM 50 at a sampling batch of 512. Fashion-MNIST padded to 32 px and made RGB stands in
# for CIFAR-10 (hub datasets cannot be fetched everywhere; throughput does not depend on the pictures).
PAPER = {**FULL, "rounds": 3, "train_warm": 3, "train_steps": 30, "sample_rounds": 3, "sample_steps": 50,
         "samplers": ("ddim",), "sample_n": 1024, "only": (*PAPER_TRAINED, "sampling"), "ratio_targets": {},
         "throughput_targets": PAPER_TARGETS,
         "overrides": ("model/size=paper", "data.image_size=32", "data.channels=3", "data.batch_size=128",
                       "metrics.batch_size=512")}  # fmt: skip


def compose(overrides: list[str], mode: dict):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    extra = ["logger=csv", "+trainer.enable_progress_bar=false"]
    if mode.get("subset"):
        extra += [f"data.subset={mode['subset']}", f"data.batch_size={mode['batch_size']}", "data.val_size=64",
                  f"metrics.batch_size={mode['batch_size']}"]  # fmt: skip
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = hydra_compose("train", overrides=extra + list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="genbench-bench-")
    try:  # helper D's precision resolution (hardware.precision=auto), where this genbench has it
        from genbench.training.speed import resolve_precision

        resolve_precision(cfg)
    except ImportError:
        pass
    return cfg


class GenbenchRun:
    """genbench's Lightning run of one model (train.py's trainer and callbacks of the step), timed per step."""

    def __init__(self, cfg, datamodule, warm: int, steps: int):
        from genbench.models import build_model

        self.cfg, self.datamodule, self.warm, self.steps = cfg, datamodule, warm, steps
        self.model = build_model(cfg.model, datamodule.image_shape, datamodule.num_classes, datamodule.class_names)
        self.model.log_every_n_steps = cfg.trainer.log_every_n_steps
        hw = cfg.hardware
        if hasattr(self.model, "configure_speed"):  # helper D's speed switches, where this genbench has them
            self.model.configure_speed(hw.get("compile", False), hw.get("channels_last", False),
                                       hw.get("fused_optimizer", False))  # fmt: skip

    def __call__(self) -> float:
        import pytorch_lightning as pl

        from genbench.train import build_trainer

        device = self.device
        times: list[float] = []

        total = self.warm + self.steps

        class StepTimer(pl.Callback):
            """Times each batch's end; stops after ``total`` batches (a GAN's max_steps counts both optimizers)."""

            def on_train_batch_end(self, trainer, *args, **kwargs):
                timing.sync(device)
                times.append(time.perf_counter())
                trainer.should_stop = len(times) >= total

        run_dir = Path(tempfile.mkdtemp(prefix="genbench-bench-run-"))
        extra = {"model": self.model} if "model" in inspect.signature(build_trainer).parameters else {}
        trainer = build_trainer(self.cfg, run_dir, [StepTimer()], **extra)
        trainer.fit(self.model, datamodule=self.datamodule)
        if len(times) != total:
            raise RuntimeError(f"the Lightning run made {len(times)} steps, not {total}")
        return times[-1] - times[self.warm - 1]

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.cfg.hardware.accelerator in ("gpu", "cuda") else "cpu")


def with_flops(result: dict, flops_per_unit: dict[str, float], peak: float) -> dict:
    for name, flops in flops_per_unit.items():
        if flops:
            result[name]["gflop_per_unit"] = flops / 1e9
            result[name]["fraction_of_peak"] = result[name]["median"] * flops / 1e9 / peak
    return result


def compare_training(cfg, datamodule, mode: dict, peak: float) -> list[dict]:
    """genbench's Lightning run of ``cfg.model`` vs the family's peer and vs a bare loop of genbench's own step."""
    family = cfg.model.family
    peer = peers.TRAINING_PEERS[family]
    run = GenbenchRun(cfg, datamodule, mode["train_warm"], mode[peer.steps])
    device, model = run.device, run.model
    precision = lambda: timing.autocast(str(cfg.hardware.precision), device)  # noqa: E731
    model.to(device)
    data = peers.batches(datamodule, device)
    steps = run.steps
    batch = datamodule.global_batch()
    # The peer as its users run it (fp32: the issue's targets are against that); under genbench's autocast too
    peer_precisions = {"peer": lambda: timing.autocast("32-true", device)}
    if mixed(cfg):
        peer_precisions["peer_autocast"] = precision
    peer_steps, peer_name, bare, params = peer.build(cfg, model, device, peer_precisions, precision)
    flops = {"genbench": timing.count_flops(lambda: bare(next(data))) / batch, "bare": None}
    flops |= {name: timing.count_flops(lambda: step(next(data))) / batch for name, step in peer_steps.items()}
    flops["bare"] = flops["genbench"]
    contenders = {
        "genbench": (run, steps * batch),
        "bare": (peers.steps_runner(bare, data, mode["train_warm"], steps, device), steps * batch),
    } | {name: (peers.steps_runner(step, data, mode["train_warm"], steps, device), steps * batch)
         for name, step in peer_steps.items()}  # fmt: skip
    result = with_flops(timing.interleaved(contenders, mode["rounds"], device), flops, peak)
    settings = {"batch": batch, "precision": str(cfg.hardware.precision), "steps_per_round": steps, "params": params}
    what = f"{family} training step, batch {batch}"
    return [
        row(f"{family}_train", what, "img/s", result["genbench"], with_autocast_peer(result), f"{peer_name}, fp32", settings),
        row(f"lightning_overhead_{family}", f"{what}: Lightning run vs bare loop", "img/s", result["genbench"],
            result["bare"], "bare loop, same net", settings),  # fmt: skip
    ]


def mixed(cfg) -> bool:
    return str(cfg.hardware.precision).endswith("-mixed")


def with_autocast_peer(result: dict) -> dict:
    """The fp32 peer's figures, with the same peer's median under genbench's autocast beside them (where measured)."""
    if "peer_autocast" not in result:
        return result["peer"]
    return {**result["peer"], "autocast_median": result["peer_autocast"]["median"]}


def compare_sampling(cfg, datamodule, mode: dict, peaks: dict) -> list[dict]:
    """genbench's evaluator sampling vs a diffusers scheduler loop over the same network and labels, each side at
    the sampling batch ``metrics.batch_size`` gives its precision (``auto``: the one measured fastest for it)."""
    from genbench.metrics.config import MetricsConfig
    from genbench.metrics.evaluator import sample_images
    from genbench.models import build_model

    model = build_model(cfg.model, datamodule.image_shape, datamodule.num_classes, datamodule.class_names)
    metrics = MetricsConfig.from_cfg(cfg.metrics)
    device = metrics.torch_device()
    model = model.to(device).eval()
    n = mode["sample_n"]
    # genbench samples in bf16 where the device has it natively (sampler.precision=bf16-mixed, a protocol of its own;
    # README "Speed switches" for its FID against fp32); the peer loop runs in fp32 and under the same autocast
    from genbench.training.speed import native_bf16

    sampling = "bf16-mixed" if native_bf16("cpu" if device.type == "cpu" else "gpu") else "32-true"
    peer_precisions = {"peer": "32-true"} | ({"peer_autocast": sampling} if sampling != "32-true" else {})
    batch = min(metrics.sampling_batch({"precision": sampling}), n)
    peer_batch = {peer: min(metrics.sampling_batch({"precision": p}), n) for peer, p in peer_precisions.items()}
    # genbench as its evaluation of metrics.n_samples images (10,000 by default) samples, metrics.compile=auto
    # deciding, and with that switch flipped, so both are on record; compilation is timed apart, in the warm-up
    compiled = metrics.compile_sampling()
    variants = {"genbench": compiled} | ({"genbench_alt": not compiled} if mode.get("flip_compile", True) else {})
    rows = []
    for name in mode["samplers"]:
        steps = mode["sample_steps"]
        from genbench.sampling import sampler_settings

        settings = sampler_settings(model, {"sampler": name, "steps": steps, "precision": sampling,
                                            **({"eta": 0.0} if name == "ddim" else {})})  # fmt: skip
        scheduler = peers.diffusers_sampler(name, steps, model.path)

        def ours(key: str, count: int, timings: dict | None = None) -> float:
            return sample_images(model, count, batch, 0, settings, device, compile=variants[key], timings=timings)[1]

        def theirs(peer: str, count: int) -> None:
            precision = partial(timing.autocast, peer_precisions[peer], device)
            peers.diffusers_sample(model.ema.module, scheduler, count, peer_batch[peer], model.image_shape,
                                   model.num_classes, device, precision)  # fmt: skip

        contenders = {key: (partial(ours, key, n), n) for key in variants}
        contenders |= {peer: (partial(theirs, peer, n), n) for peer in peer_precisions}
        warm_up = {key: {} for key in variants}
        for key in variants:  # warm-up at the timed batch shape: kernel choice, and compilation (kept out)
            ours(key, batch, warm_up[key])
        for peer in peer_precisions:
            theirs(peer, peer_batch[peer])
        net_flops = timing.count_flops(lambda: model.ema.module(torch.zeros(1, *model.image_shape, device=device),
                                                                 torch.zeros(1, dtype=torch.long, device=device),
                                                                 None if model.num_classes is None else
                                                                 torch.zeros(1, dtype=torch.long, device=device)))  # fmt: skip
        result = timing.interleaved(contenders, mode["sample_rounds"], device)
        result = with_flops(result, {key: net_flops * steps for key in contenders}, peaks["bf16" if sampling != "32-true" else "fp32"])
        seconds = {key: round(w["compile_seconds"], 2) if "compile_seconds" in w else None for key, w in warm_up.items()}
        result["genbench"] |= {"compiled": compiled, "compile_seconds": seconds["genbench"]}
        if "genbench_alt" in result:
            result["genbench"]["alternative"] = {"compiled": not compiled, "compile_seconds": seconds["genbench_alt"],
                                                 **result.pop("genbench_alt")}  # fmt: skip
        what = f"sampling, {name} {steps} steps, batch {batch}"
        what += f" (peer {peer_batch['peer']})" if peer_batch["peer"] != batch else ""
        rows.append(row(f"sample_{name}{steps}", what, "samples/s",
                        result["genbench"], with_autocast_peer(result), f"diffusers {type(scheduler).__name__} loop, fp32",
                        {"batch": batch, "peer_batch": peer_batch, "n": n, "steps": steps, "precision": sampling,
                         "compile": metrics.compile}))  # fmt: skip
    return rows


def compare_evaluation(cfg, datamodule, mode: dict, workdir: Path) -> list[dict]:
    """genbench's evaluation (memorization included, warm cache) vs torch-fidelity's calculate_metrics."""
    import torch_fidelity

    from genbench.metrics import evaluate_images
    from genbench.metrics.config import MetricsConfig
    from genbench.metrics.evaluator import images_from_datamodule
    from genbench.metrics.extractors import FEATURE_BATCH, FMNIST

    n_ref = mode["n_reference"]
    tiny = {"heldout_split": "val", "n_reference": n_ref} if n_ref else {}  # the val split: 64 images in tiny mode
    metrics = MetricsConfig.from_cfg({**dict(cfg.metrics), "extractor": FMNIST, "cache_dir": str(workdir / "cache"), **tiny})
    device = metrics.torch_device()
    reference = datamodule.images("test")[:n_ref]

    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    rows = []
    for n in mode["eval_n"]:
        fake = datamodule.images("train")[:n]
        kid_size = min(metrics.kid_subset_size, n)
        config = MetricsConfig(**{**metrics.__dict__, "n_samples": n})

        def ours() -> None:
            evaluate_images(fake, images_from_datamodule(datamodule, "test", n_ref), config,
                            train=images_from_datamodule(datamodule, "train"),
                            heldout=images_from_datamodule(datamodule, metrics.heldout_split))  # fmt: skip

        def theirs() -> None:
            torch_fidelity.calculate_metrics(
                input1=Images(fake), input2=Images(reference), feature_extractor=FMNIST, isc=True, fid=True, kid=True,
                prc=True, kid_subset_size=kid_size, kid_subsets=metrics.kid_subsets, isc_splits=max(1, min(10, n // 100)),
                batch_size=FEATURE_BATCH, cuda=device.type == "cuda", verbose=False, cache=True,
                cache_root=str(workdir / "fidelity"), input2_cache_name=f"bench-reference-{len(reference)}",
                save_cpu_ram=True,
            )  # fmt: skip

        ours(), theirs()  # warm caches (reference features, distances) on both sides
        result = timing.interleaved({"genbench": (ours, n), "peer": (theirs, n)}, mode["eval_rounds"], device)
        rows.append(row(f"evaluate_{n}", f"evaluation of {n} images vs {len(reference)} ({FMNIST})", "img/s",
                        result["genbench"], result["peer"], "torch-fidelity calculate_metrics (no memorization)",
                        {"n": n, "n_reference": len(reference), "memorization": metrics.memorization}))  # fmt: skip
    return rows


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def row(name, what, unit, genbench: dict, peer: dict, peer_name: str, settings: dict) -> dict:
    ratio = genbench["median"] / peer["median"]
    extra = {"ratio_autocast": genbench["median"] / peer["autocast_median"]} if "autocast_median" in peer else {}
    return {"name": name, "what": what, "unit": unit, "genbench": genbench, "peer": {"name": peer_name, **peer},
            "ratio": ratio, **extra, "settings": settings}  # fmt: skip


def judge(r: dict, mode: dict) -> dict:
    """``r`` with the mode's target for it: a ratio to the peer, or (``--paper``) genbench's own throughput."""
    ratio, throughput = mode["ratio_targets"].get(r["name"]), mode["throughput_targets"].get(r["name"])
    met = r["genbench"]["median"] >= throughput if throughput else r["ratio"] >= ratio if ratio else None
    return r | {"target_ratio": ratio, "target_throughput": throughput, "target_met": None if met is None else bool(met)}


def print_table(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    hw = record["hardware"]
    title = (f"genbench bench ({record['mode']}) on {hw['name']}, {hw['threads']} threads, torch {record['torch']}; "
             f"matmul peak fp32 {record['peak_gflops']['fp32']:.0f}, bf16 {record['peak_gflops']['bf16']:.0f} GFLOP/s")  # fmt: skip
    table = Table(title=title, title_justify="left")
    columns = ("comparison", "genbench", "peer", "peer's", "ratio", "target", "", "% of peak", "peer autocast",
               "genbench, sampling compile flipped")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("comparison", "peer") else "right")
    for r in record["comparisons"]:
        g, p = r["genbench"], r["peer"]
        fraction = g.get("fraction_of_peak")
        status = "" if r["target_met"] is None else ("[green]pass" if r["target_met"] else "[red]miss")
        if r.get("target_throughput"):
            target = f">= {r['target_throughput']:,.0f} {r['unit']}"
        else:
            target = "" if r["target_ratio"] is None else f">= {r['target_ratio']:.2f}x"
        alt = g.get("alternative")
        flipped = "" if alt is None else (f"{'on' if alt['compiled'] else 'off'}: {alt['median']:,.1f} "
                                          f"({alt['median'] / p['median']:.2f}x)")  # fmt: skip
        table.add_row(r["name"], f"{g['median']:,.1f} {r['unit']}", p["name"], f"{p['median']:,.1f}", f"{r['ratio']:.2f}x",
                      target, status, "" if fraction is None else f"{100 * fraction:.1f}%",
                      f"{p['autocast_median']:,.1f} ({r['ratio_autocast']:.2f}x)" if "autocast_median" in p else "",
                      flipped)  # fmt: skip
    Console(width=max(150, Console().width)).print(table)
    for r in record["comparisons"]:
        print(f"  {r['name']}: {r['what']}; settings {json.dumps(r['settings'])}")


def plot_record(record: dict, stem: Path) -> list[Path]:
    """``stem.png``/``.pdf``: each comparison's ratio as a bar (green: target met, red: missed, grey: none), its target
    as a black tick, and the peer-under-autocast and flipped-compile ratios as markers. Rows with a throughput target
    (``--paper``) are drawn as genbench's throughput over that target."""
    from genbench.report.figures import plt, save_figure

    rows = record["comparisons"]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.3))
    for y, r in enumerate(rows):
        scale = r.get("target_throughput") or r["genbench"]["median"] / r["ratio"]  # the denominator of the bar
        value = r["genbench"]["median"] / scale
        colour = "0.6" if r["target_met"] is None else ("tab:green" if r["target_met"] else "tab:red")
        ax.barh(y, value, color=colour, height=0.6)
        label = f" {value:.2f}x" + (f" ({r['genbench']['median']:,.0f} {r['unit']})" if r.get("target_throughput") else "")
        ax.text(value, y, label, va="center", fontsize=8)
        target = 1.0 if r.get("target_throughput") else r["target_ratio"]
        if target:
            ax.plot([target, target], [y - 0.4, y + 0.4], color="black", linewidth=2)
        if "ratio_autocast" in r and not r.get("target_throughput"):
            ax.plot(r["ratio_autocast"], y, "o", mfc="none", mec="black", markersize=6)
        alt = r["genbench"].get("alternative")
        if alt:
            ax.plot(alt["median"] / scale, y, "x", color="black", markersize=6)
    ax.axvline(1.0, color="0.3", linewidth=0.8, linestyle=":")
    ax.set_xlim(0, ax.get_xlim()[1] * 1.08)  # room for the last bar's label
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    paper = any(r.get("target_throughput") for r in rows)
    ax.set_xlabel("genbench throughput / target where it is a throughput, else / peer's (fp32)" if paper
                  else "genbench throughput / peer's (fp32)")  # fmt: skip
    hw = record["hardware"]
    ax.set_title(f"make bench ({record['mode']}) on {hw['name']}, torch {record['torch']}, {str(record['git_commit'])[:7]}\n"
                 "bar: genbench; |: target; o: vs the peer under bf16 autocast; x: sampling compile flipped", fontsize=8)
    provenance = {"AI-generated": "false", "Software": "genbench benchmarks/bench.py", "commit": str(record["git_commit"]),
                  "machine": hw["name"], "date": record["date"]}  # fmt: skip
    return save_figure(fig, stem, provenance)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="seconds, not minutes: the smoke test make test runs")
    parser.add_argument("--paper", action="store_true",
                        help="the paper-size U-Net at 32x32x3 (issue 12's GPU targets): training and DDIM-50 sampling; "
                             "with --tiny, its smoke run")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None, help="rounds per comparison (default 7; sampling and evaluation 3)")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    parser.add_argument("--only", nargs="+", choices=[*TRAINED, "training", "sampling", "evaluation"], default=None,
                        help="a family's training comparison, every family's (training), sampling, evaluation")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="genbench train overrides (hardware=gpu_bf16, data.batch_size=...)")
    args = parser.parse_args(argv)
    mode = dict(PAPER if args.paper else FULL)
    if args.tiny:  # the smoke run's sizes; --tiny --paper keeps the paper network, at the tiny batch
        mode |= TINY_SIZES
        mode["overrides"] = tuple(o for o in mode["overrides"] if not o.startswith(("data.batch_size=", "metrics.batch_size=")))
        # compiling the 35.7M-parameter network on a CPU costs a minute: the paper smoke run samples as configured only
        mode["flip_compile"] = not args.paper
    mode["name"] = "-".join(name for name, on in (("paper", args.paper), ("tiny", args.tiny)) if on) or "full"
    if args.rounds:
        mode.update(rounds=args.rounds, sample_rounds=args.rounds, eval_rounds=args.rounds)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))

    overrides = [*mode["overrides"], *args.overrides]
    if args.paper and torch.cuda.is_available():
        overrides.insert(0, "data.on_device=true")  # the whole uint8 set on the GPU, as experiment=cifar10_compare
    cfg = compose(overrides, mode)  # train.yaml's default model unless the overrides say otherwise: it takes a sampler
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    device = torch.device("cuda" if cfg.hardware.accelerator in ("gpu", "cuda") else "cpu")
    peak = {"fp32": timing.matmul_peak(torch.float32, device), "bf16": timing.matmul_peak(torch.bfloat16, device)}
    peak_now = peak["bf16" if str(cfg.hardware.precision).startswith("bf16") else "fp32"]
    only = set(args.only or mode["only"])
    if "training" in only:
        only |= set(TRAINED)
    comparisons = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genbench-bench-") as workdir:
        for family in (f for f in TRAINED if f in only):
            say(f"{family} training")
            comparisons += compare_training(compose(overrides + [f"model={family}"], mode), datamodule, mode, peak_now)
        if "sampling" in only:
            say("sampling")
            comparisons += compare_sampling(cfg, datamodule, mode, peak)
        if "evaluation" in only:
            say("evaluation")
            comparisons += compare_evaluation(cfg, datamodule, mode, Path(workdir))
    import diffusers
    import pytorch_lightning
    import torch_fidelity

    from genbench.training.record import git_commit

    comparisons = [judge(r, mode) for r in comparisons]
    hw = timing.hardware(device)
    record = {
        "schema": 1, "mode": mode["name"], "hardware": hw, "torch": torch.__version__,
        "diffusers": diffusers.__version__, "torch_fidelity": torch_fidelity.__version__,
        "lightning": pytorch_lightning.__version__,
        "git_commit": git_commit(ROOT) or os.environ.get("GENBENCH_GIT_COMMIT"),  # a copied tree has no .git
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "overrides": overrides,
        "precision": str(cfg.hardware.precision), "peak_gflops": peak, "seconds": round(time.perf_counter() - started, 1),
        "comparisons": comparisons,
    }  # fmt: skip
    out = Path(args.out)
    path = out / f"{hw['slug']}{'' if mode['name'] == 'full' else '-' + mode['name']}.json"
    if args.only and path.exists():  # a partial run replaces its comparisons in the machine's record, keeps the rest
        previous = json.loads(path.read_text())
        kept = [r for r in previous.get("comparisons", []) if r["name"] not in {c["name"] for c in comparisons}]
        record["comparisons"] = kept + comparisons
        record["parts"] = previous.get("parts", []) + [{k: previous[k] for k in ("date", "git_commit", "seconds")}]
    bad = [r["name"] for r in record["comparisons"] for side in ("genbench", "peer") if not (math.isfinite(r[side]["median"]) and r[side]["median"] > 0)]
    if bad:
        raise SystemExit(f"genbench: error: non-finite or non-positive throughput in {bad}")
    out.mkdir(parents=True, exist_ok=True)
    from genbench.files import write_json

    write_json(path, record)
    print_table(record)
    figures = plot_record(record, path.with_suffix(""))
    print(f"written {path} and {', '.join(str(f) for f in figures)}")
    return record


if __name__ == "__main__":
    main()
