"""Shared fixtures: an offline session, one prepared Fashion-MNIST cache, composed train configs, tiny models.

Every training run in the suite is tiny (a few dozen images, a handful of steps, nets of width 8) so the
whole suite stays within minutes on two CPU cores. Subprocess helpers run the real entry points with
``sys.executable`` from the repository root, so Hydra's command line is exercised as a user meets it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Before anything imports `datasets` or `wandb`, which read these once at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
# Width-8 nets gain nothing from intra-op threads, and on a shared 2-core machine two threads per process run
# several times slower than one; subprocesses inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from genbench.models import families  # noqa: E402 - after the environment above, which imports read once

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
# Every family, as the Makefile and the report list them: conf/model/*.yaml (genbench.models.families).
FAMILIES = tuple(families())
# run.json, as the contract names it
RUN_FIELDS = {"family", "status", "stop_reason", "seed", "params", "images_seen", "steps", "train_seconds", "img_per_s",
              "peak_mem_mb", "hardware", "git_commit", "started", "finished", "train_flops_per_image", "train_flops"}  # fmt: skip
HARDWARE_FIELDS = {"accelerator", "device_name", "precision", "devices"}


def cpu_precision() -> str:
    """What ``hardware=cpu`` (precision auto) trains in on this machine: bf16-mixed where the CPU has native bf16."""
    from genbench.training.speed import native_bf16

    return "bf16-mixed" if native_bf16("cpu") else "32-true"

# Width-8 networks and short samplers: enough to exercise every code path, cheap enough for CPU CI. Each family's
# networks are shrunk by what their config holds, whatever the family: every base_channels to 8, every
# latent_dim to a quarter, every num_heads to 2, a first stage's train_images (a latent space's autoencoder) to two
# batches of TINY_RUN, so that a short run trains both stages (a new family's conf/model/FAMILY.yaml gets the same).
TINY_WIDTHS = {"base_channels": lambda v: 8, "latent_dim": lambda v: max(1, v // 4), "num_heads": lambda v: 2,
               "train_images": lambda v: 32}  # fmt: skip


def tiny_model_overrides(family: str) -> list[str]:
    """``model.…`` overrides that shrink ``family``'s networks (see TINY_WIDTHS), found in conf/model/FAMILY.yaml."""
    from omegaconf import DictConfig, OmegaConf

    found = []

    def walk(node: DictConfig, path: str) -> None:
        for key, value in node.items():
            if isinstance(value, DictConfig):
                walk(value, f"{path}.{key}")
            elif key in TINY_WIDTHS and isinstance(value, int):
                found.append(f"{path}.{key}={TINY_WIDTHS[key](value)}")

    walk(OmegaConf.load(CONF_DIR / "model" / f"{family}.yaml"), "model")
    return found


TINY_MODEL = {family: tiny_model_overrides(family) for family in FAMILIES}
TINY_RUN = [
    "data.subset=64",
    "data.batch_size=16",
    "trainer.log_every_n_steps=1",  # the NaN check runs every step
    "callbacks.sample_grid.n=8",
    "sampler.steps=4",
    "callbacks.progress_bar.refresh_rate=0",
    "++trainer.limit_test_batches=2",  # the VAE's test-split ELBO after training: two batches are enough here
]


def fmnist_available() -> bool:
    from genbench.data.idx import find_root

    return find_root(None) is not None


requires_fmnist = pytest.mark.skipif(
    not fmnist_available(), reason="Fashion-MNIST IDX files not installed (Debian's dataset-fashion-mnist)"
)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def genbench_cache(tmp_path_factory) -> Path:
    """One cache dir per session (or the caller's GENBENCH_CACHE), shared by in-process runs and subprocesses."""
    given = os.environ.get("GENBENCH_CACHE")
    cache = Path(given) if given else tmp_path_factory.mktemp("genbench_cache")
    os.environ["GENBENCH_CACHE"] = str(cache)
    yield cache
    if given is None:
        os.environ.pop("GENBENCH_CACHE", None)


@pytest.fixture(scope="session")
def fmnist(genbench_cache) -> Path:
    """Builds the prepared Arrow splits once (about 25 s), so every run after reads them straight back."""
    if not fmnist_available():
        pytest.skip("Fashion-MNIST IDX files not installed (Debian's dataset-fashion-mnist)")
    from genbench.data.sources import SourceSpec, load_splits

    load_splits(SourceSpec(source="fashion_mnist"), genbench_cache / "data")
    return genbench_cache / "data"


def tiny_overrides(family: str) -> list[str]:
    return [f"model={family}", *TINY_MODEL[family], *TINY_RUN]


def compose_train(run_dir: Path, *overrides: str):
    """The train config as `python -m genbench.train` would build it, with the run folder at ``run_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    extra = [] if (CONF_DIR / "metrics" / "default.yaml").exists() else ["~metrics"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None, job_name="test"):
        cfg = compose("train", overrides=[*extra, f"paths.output_dir={run_dir}", f"paths.runs_dir={run_dir.parent}",
                                          *overrides])  # fmt: skip
    return cfg


def train_run(run_dir: Path, family: str, *overrides: str) -> dict:
    """Train a tiny ``family`` model in-process into ``run_dir`` and return its run record."""
    from genbench.train import train

    return train(compose_train(run_dir, *tiny_overrides(family), *overrides))


def run_cli(module: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m genbench.<module> args…`` from the repository root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", f"genbench.{module}", *args], **_cli_kwargs(env), timeout=timeout, capture_output=True,
        text=True,
    )  # fmt: skip


def start_cli(module: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """The same, started in the background: entry points take ~10 s just to import Lightning, so tests that
    only read a command's outcome start them together and collect them with :func:`finish_cli`."""
    return subprocess.Popen(
        [sys.executable, "-m", f"genbench.{module}", *args], **_cli_kwargs(env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish_cli(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# Runs each job as `python -m genbench.<module> args…` would, in a child forked after the shared heavy imports:
# runpy executes the entry module afresh as __main__ with the job's argv. Whatever the warm-up import wrote to
# stdout/stderr is prepended to every job's output, so each job's output is what a lone process would print.
_BATCH_DRIVER = r"""
import json, os, runpy, sys, traceback
jobs = json.loads(sys.argv[1])
saved_out, saved_err = os.dup(1), os.dup(2)
os.dup2(os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
os.dup2(os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
import pytorch_lightning, hydra, genbench.cli, genbench.models, genbench.data, genbench.imageio  # noqa: E401
import genbench.training.budget, genbench.training.callbacks, genbench.training.record  # noqa: E401
sys.stdout.flush(); sys.stderr.flush()
os.dup2(saved_out, 1); os.dup2(saved_err, 2)
codes = []
for job in jobs:
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.argv = ["-m", *job["args"]]
        code = 0
        try:
            runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


def run_cli_batch(jobs: dict[str, tuple[str, list[str]]], workdir: Path, timeout: float = 600):
    """Several ``python -m genbench.<module> args…`` commands for the price of one Lightning import (~10 s).

    ``jobs`` maps a name to (module, args); returns name -> CompletedProcess with that command's exit code,
    stdout and stderr.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec = [
        {"module": f"genbench.{module}", "args": list(args), "stdout": str(workdir / f"{name}.out"),
         "stderr": str(workdir / f"{name}.err")}
        for name, (module, args) in jobs.items()
    ]  # fmt: skip
    warm_out, warm_err = workdir / "warmup.out", workdir / "warmup.err"
    driver = subprocess.run([sys.executable, "-c", _BATCH_DRIVER, json.dumps(spec), str(warm_out), str(warm_err)],
                            **_cli_kwargs(None), capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert driver.returncode == 0, driver.stderr[-3000:]
    codes = json.loads(driver.stdout.strip().splitlines()[-1])
    return {
        name: subprocess.CompletedProcess(
            [sys.executable, "-m", job["module"], *job["args"]], code,
            warm_out.read_text() + Path(job["stdout"]).read_text(), warm_err.read_text() + Path(job["stderr"]).read_text(),
        )
        for (name, job), code in zip(zip(jobs, spec), codes)
    }  # fmt: skip


def _cli_kwargs(env: dict | None) -> dict:
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return {"cwd": REPO, "env": full_env}


def assert_contract_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 and exactly one stderr line, ``genbench: error: …``, naming each of ``words``; returns that line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("genbench: error:"), result.stderr[-3000:]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]
