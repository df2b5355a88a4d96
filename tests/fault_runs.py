"""Helpers for the tests that stop a run on purpose (tests/e2e/test_faults.py, test_signals.py).

A run is a real driver process started in a session of its own. It is stopped at a marker on
disk (a stage's tmp folder, a DeepSpeed checkpoint), and only this run's processes are touched:
actors are found among the driver's descendants (its local Ray cluster), never by name across
the host, where other selfplay runs may be going. Every wait has a deadline.
"""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from selfplay.pipeline import HOLD_BEFORE_COMMIT

REPO = Path(__file__).resolve().parent.parent

# Two iterations on few prompts: every stage runs, a train stage saves several checkpoints.
SMALL = ["iterations=2", "prompts.per_iteration=16", "prompts.eval_size=8", "train.epochs=2",
         "train.checkpoint_every=1", "tracking.project=selfplay-tests"]
MARKER_DEADLINE = 600  # seconds for a run to reach a marker (a driver start costs ~1 min on 2 cores)


def cli(*args, timeout=900, **kwargs):
    return subprocess.run([sys.executable, "-m", "selfplay.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kwargs)


def start_cli(*args, hold: str | None = None) -> subprocess.Popen:
    """A driver in a session of its own: a Ctrl-C in the test's terminal does not reach it, and
    `stop_session` can clean up after a failed test. `hold="<iteration>:<stage>"` keeps it in that
    stage before the commit (selfplay.pipeline.HOLD_BEFORE_COMMIT), so the stage's .tmp folder
    stays until the test stops the driver: most stages last 0.1-0.6 s, which a poll can miss."""
    env = {**os.environ, HOLD_BEFORE_COMMIT: hold} if hold else None
    return subprocess.Popen([sys.executable, "-m", "selfplay.cli", *args], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def start_run(run_dir: Path, *extra, hold: str | None = None) -> subprocess.Popen:
    return start_cli("run", "recipes/quickstart-cpu.yaml", "--run-dir", str(run_dir), *SMALL, *extra, hold=hold)


@contextmanager
def driver_session(process: subprocess.Popen):
    """Whatever happens in the test, no process of this driver's session outlives it."""
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def wait_for(process: subprocess.Popen, marker: Path, deadline: float = MARKER_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not marker.exists():
        assert process.poll() is None, f"run ended before {marker} appeared: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < end, f"{marker} did not appear within {deadline} s"
        time.sleep(0.02)


def kill_when(process: subprocess.Popen, marker: Path, delay: float = 0.0, group: bool = True) -> list:
    """SIGKILL the driver and its whole session (its local Ray cluster) once `marker` exists, or
    with group=False the driver alone, as an OOM kill does. Returns the processes it had
    started (psutil.Process), for a check that none of them outlives the next driver."""
    wait_for(process, marker)
    time.sleep(delay)
    started = psutil.Process(process.pid).children(recursive=True)
    if group:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    return started


def still_running(processes: list) -> list[int]:
    """PIDs of `processes` that have not ended (a zombie has)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def actor_pids(driver_pid: int, actor: str) -> list[int]:
    """PIDs of this driver's Ray actors of class `actor`: Ray titles a worker `ray::<Class>...`,
    and a local cluster's workers descend from the driver that started it."""
    found = []
    for child in psutil.Process(driver_pid).children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith(f"ray::{actor}"):
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def kill_actors_when(process: subprocess.Popen, marker: Path, actor: str) -> str:
    """SIGKILL this run's Ray actors of class `actor` once `marker` exists; the driver's stderr."""
    wait_for(process, marker)
    pids = actor_pids(process.pid, actor)
    assert pids, f"no ray::{actor} process under driver {process.pid}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return process.communicate(timeout=900)[1]


def final_state(run_dir: Path) -> dict:
    return {"weights": (run_dir / "iter-002/train/policy/model.safetensors").read_bytes(),
            "metrics": [json.loads((run_dir / f"iter-{t:03d}/evaluate/metrics.json").read_text()) for t in (1, 2)],
            "samples": [pq.read_table(run_dir / f"iter-{t:03d}/generate/samples.parquet").num_rows for t in (1, 2)],
            "pairs": [pq.read_table(run_dir / f"iter-{t:03d}/pairs/pairs.parquet").to_pylist() for t in (1, 2)]}


def unbroken_run(run_dir: Path) -> dict:
    result = cli("run", "recipes/quickstart-cpu.yaml", "--run-dir", str(run_dir), *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    return {**final_state(run_dir), "run_dir": run_dir}


def train_ranks(run_dir: Path, iteration: int) -> dict:
    """How a train stage got its ranks and policy (the manifest's `ranks`)."""
    return json.loads((run_dir / f"iter-{iteration:03d}/train/manifest.json").read_text())["ranks"]
