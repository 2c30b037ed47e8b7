"""SLURM through submitit, on a machine without SLURM: fake ``sbatch``/``srun``/``sacct``/``scontrol`` on PATH.

The fakes behave like a one-node cluster: ``sbatch`` records the script and runs each array task of it with bash in
the background (with SLURM's environment variables), ``srun`` runs its command (writing submitit's log files),
``sacct`` reports RUNNING or COMPLETED, and ``scontrol requeue`` makes the task run its script again once the current
run exits, as SLURM requeues a job. So the real launcher, the real submitted script and the real training run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, REPO, requires_fmnist
from genbench.errors import GenbenchError
from genbench.training.slurm import check_tasks_match_hardware

_RECORD = """
import json, os, sys
from pathlib import Path
STATE = Path(os.environ["FAKE_SLURM_DIR"])
def record(tool, **extra):
    with open(STATE / "calls.jsonl", "a") as f:
        f.write(json.dumps({"tool": tool, "argv": sys.argv[1:], **extra}) + "\\n")
"""

FAKES = {
    # sbatch SCRIPT: one background runner per array task; prints what sbatch prints
    "sbatch": _RECORD + """
import re, subprocess
script = Path(sys.argv[-1])
text = script.read_text()
job_id = 1234 + len(list(STATE.glob("sbatch-*.sh")))
(STATE / f"sbatch-{job_id}.sh").write_text(text)
record("sbatch")
array = re.search(r"^#SBATCH --array=(\\d+)-(\\d+)", text, re.M)
for n, task in enumerate(range(int(array[1]), int(array[2]) + 1) if array else [None]):
    key = f"{job_id}_{task}" if array else str(job_id)
    env = {**os.environ, "SLURM_JOB_ID": str(job_id + 100 * (n + 1) if array else job_id), "SLURM_JOB_NAME": "train",
           "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODELIST": "localhost",
           "SLURM_JOB_NODELIST": "localhost", "FAKE_SLURM_KEY": key}
    if array:
        env.update(SLURM_ARRAY_JOB_ID=str(job_id), SLURM_ARRAY_TASK_ID=str(task))
    subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake-slurm-task")), str(script)], env=env,
                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {job_id}")
""",
    # not a SLURM tool: runs one task's script, again after each `scontrol requeue`, as SLURM would
    "fake-slurm-task": _RECORD + """
import subprocess
key = os.environ["FAKE_SLURM_KEY"]
restarts = 0
while True:
    env = {**os.environ, "SLURM_RESTART_COUNT": str(restarts)}
    subprocess.run(["bash", sys.argv[1]], env=env)
    marker = STATE / f"requeue-{key}"
    if not marker.exists():
        break
    marker.unlink()
    restarts += 1
(STATE / f"done-{key}").touch()
""",
    # srun [--unbuffered] --output OUT [--error ERR] COMMAND...: runs COMMAND in this process
    "srun": _RECORD + """
args, paths = sys.argv[1:], {}
while args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        paths[flag] = args.pop(0)
fill = {"%A": os.environ.get("SLURM_ARRAY_JOB_ID", ""), "%a": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
        "%j": os.environ["SLURM_JOB_ID"], "%t": "0"}
record("srun", key=os.environ["FAKE_SLURM_KEY"], pid=os.getpid(), wandb_mode=os.environ.get("WANDB_MODE"))
for flag, fd in (("--output", 1), ("--error", 2)):
    if flag in paths:
        path = paths[flag]
        for pattern, value in fill.items():
            path = path.replace(pattern, value)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), fd)
os.execvp(args[0], args)
""",
    # sacct -o JobID,State,NodeList --parsable2 -j ID...
    "sacct": _RECORD + """
record("sacct")
print("JobID|State|NodeList")
for script in sorted(STATE.glob("sbatch-*.sh")):
    job_id = script.stem.split("-")[1]
    array = re.search(r"^#SBATCH --array=(\\d+)-(\\d+)", script.read_text(), re.M)
    keys = [f"{job_id}_{t}" for t in range(int(array[1]), int(array[2]) + 1)] if array else [job_id]
    for key in keys:
        print(f"{key}|{'COMPLETED' if (STATE / f'done-{key}').exists() else 'RUNNING'}|localhost")
""".replace("import json, os, sys", "import json, os, re, sys"),
    # scontrol requeue JOBID
    "scontrol": _RECORD + """
record("scontrol")
assert sys.argv[1] == "requeue", sys.argv
(STATE / f"requeue-{sys.argv[2]}").touch()
""",
}


def _with_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.fixture
def fake_slurm(tmp_path):
    """A PATH with the fakes first and their state folder; kills what the fakes started, if a test leaves any."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, body in FAKES.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state),
           "PYTHONPATH": str(REPO / "src")}  # fmt: skip
    env.pop("HYDRA_FULL_ERROR", None)
    yield env, state
    for call in calls(state, "srun"):
        try:
            os.kill(call["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


def calls(state: Path, tool: str) -> list[dict]:
    path = state / "calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [c for c in map(json.loads, lines) if c["tool"] == tool]


def train(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "genbench.train", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@requires_fmnist
def test_slurm_sweep_submits_a_correct_script_and_a_requeued_run_resumes(tmp_path, fmnist, fake_slurm):
    """The issue's command reaches sbatch with one array task per run; the VAE job gets the pre-timeout signal
    mid-training, saves its latest step, is requeued, and the requeued job resumes and completes."""
    env, state = fake_slurm
    env.pop("WANDB_MODE", None)  # unset when submitting: the script's setup line makes it offline on the node
    sweep = train("-m", "hydra/launcher=slurm", "experiment=smoke", "model=gan,vae", "name=slurm", "evaluate=false",
                  "budget.max_steps=60", "callbacks.sample_grid.every_n_steps=5", f"paths.runs_dir={tmp_path}",
                  "hydra.launcher.partition=testq", "hydra.launcher.timeout_min=30", env=env)  # fmt: skip
    # tasks that do not match the hardware are refused before anything is submitted
    refused = train("-m", "hydra/launcher=slurm_multinode", "experiment=smoke", f"paths.runs_dir={tmp_path / 'no'}",
                    env={**env, "FAKE_SLURM_DIR": str(tmp_path)})  # fmt: skip

    def vae_step_5():
        return sweep.poll() is not None or list((tmp_path / "slurm").glob("*model-vae/samples/step_000005.png"))

    srun = wait_for(lambda: [c for c in calls(state, "srun") if c["key"] == "1234_1"], 300, "the VAE task to start")
    wait_for(vae_step_5, 300, "the VAE's step 5")
    os.kill(srun[0]["pid"], signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err[-3000:]
    _, refused_err = refused.communicate(timeout=300)
    assert refused.returncode == 2 and refused_err.startswith("genbench: error: SLURM tasks must match"), refused_err
    assert "tasks_per_node=8 but hardware.devices=1" in refused_err and not (tmp_path / "calls.jsonl").exists()

    script = (state / "sbatch-1234.sh").read_text()
    assert len(calls(state, "sbatch")) == 1 and "#SBATCH --array=0-1%2" in script  # one task per run
    for line in ("--partition=testq", "--gpus-per-node=1", "--time=30", "--signal=USR2@120", "--ntasks-per-node=1",
                 "--nodes=1", "--cpus-per-task=8", "--mem=32GB", "--requeue", "--open-mode=append"):
        assert f"#SBATCH {line}\n" in script, line
    assert "python -u -m submitit.core._submit" in script and f"{tmp_path}/slurm/.submitit/" in script
    assert {c["wandb_mode"] for c in calls(state, "srun")} == {"offline"}

    assert [c["argv"] for c in calls(state, "scontrol")] == [["requeue", "1234_1"]]  # the VAE's task, once
    assert len(calls(state, "srun")) == 3  # gan, vae, and the vae requeued
    vae, gan = (next((tmp_path / "slurm").glob(f"*model-{family}")) for family in ("vae", "gan"))
    log = (vae / "train.log").read_text()
    saved = re.search(r"SIGUSR2 received: saved \S+last\.ckpt at global step (\d+)", log)
    assert saved and 5 <= int(saved[1]) < 60, log[-3000:]  # the latest step: periodic saves are every 1000
    assert "resuming from" in log.split(saved[0])[1]
    record = json.loads((vae / "run.json").read_text())
    assert record["status"] == "completed" and record["steps"] == 60, record
    assert json.loads((gan / "run.json").read_text())["status"] == "completed"


def test_setup_line_sets_wandb_offline_only_when_unset():
    setup = _with_hydra("hydra/launcher=slurm").hydra.launcher.setup
    script = "\n".join([*setup, 'echo "$WANDB_MODE"'])
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    unset = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    given = subprocess.run(["bash", "-c", script], env={**env, "WANDB_MODE": "online"}, capture_output=True, text=True,
                           check=True)  # fmt: skip
    assert (unset.stdout.strip(), given.stdout.strip()) == ("offline", "online")


def test_tasks_must_match_hardware_devices_and_nodes():
    multinode = _with_hydra("hydra/launcher=slurm_multinode", "hardware=ddp", "hardware.devices=8",
                            "++hardware.num_nodes=2")  # fmt: skip
    launcher = OmegaConf.to_container(multinode.hydra.launcher, resolve=False)
    check_tasks_match_hardware(launcher, multinode)  # 2 nodes x 8 tasks = 2 nodes x 8 devices
    with pytest.raises(GenbenchError, match="nodes=2 but hardware.num_nodes=1"):
        check_tasks_match_hardware(launcher, _with_hydra("hardware=ddp", "hardware.devices=8"))
    with pytest.raises(GenbenchError, match="tasks_per_node=8 but hardware.devices=4"):
        four = _with_hydra("hardware=ddp", "hardware.devices=4", "++hardware.num_nodes=2")
        check_tasks_match_hardware(launcher, four)
    every_gpu = _with_hydra("hardware=ddp", "++hardware.num_nodes=2")  # devices=-1: the 8 GPUs each node is given
    check_tasks_match_hardware(launcher, every_gpu)
    with pytest.raises(GenbenchError, match="gpus_per_node=4 is fewer than tasks_per_node=8"):
        check_tasks_match_hardware({**launcher, "gpus_per_node": 4}, multinode)


@pytest.mark.slow
@requires_fmnist
def test_local_submitit_sweep_runs_two_jobs(tmp_path, fmnist):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("HYDRA_FULL_ERROR", None)
    result = train("-m", "hydra/launcher=local", "experiment=smoke", "model=gan,vae", "name=local", "evaluate=false",
                   f"paths.runs_dir={tmp_path}", env=env)  # fmt: skip
    out, err = result.communicate(timeout=400)
    assert result.returncode == 0, err[-3000:]
    for family in ("gan", "vae"):
        run = tmp_path / "local" / f"model-{family}"
        record = json.loads((run / "run.json").read_text())
        assert record["status"] == "completed" and record["steps"] == 4, record
        assert (run / "checkpoints" / "last.ckpt").exists() and (run / "config.yaml").exists()
    assert len(list((tmp_path / "local" / ".submitit").glob("*/*_result.pkl"))) == 2  # one submitit job per run


def test_slurm_launcher_without_slurm_is_one_error_line(tmp_path):
    """On a machine without sbatch/srun the sweep stops with genbench's error (exit 2), not submitit's traceback."""
    bare_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                if not (Path(p) / "sbatch").exists() and not (Path(p) / "srun").exists())  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "genbench.train", "-m", "hydra/launcher=slurm", "experiment=smoke", "model=gan,vae",
         f"paths.runs_dir={tmp_path / 'runs'}"],
        cwd=tmp_path, env={**os.environ, "PATH": bare_path}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genbench: error:") and "hydra/launcher=local" in lines[0]
    assert not list((tmp_path / "runs").glob("*/*/run.json"))
