"""W&B mirrors metrics.jsonl exactly across a crash: the driver is SIGKILLed right after a stage
row reached metrics.jsonl, `selfplay resume` finishes the run, and W&B's own reader
(`wandb leet inspect --json`) finds every metrics.jsonl row exactly once in the run's offline
files. A fork is a new W&B run in the parent's group whose config names its parent."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfplay.track.tracker import wandb_row
from selfplay.track.wandb_offline import find_run_files

from conftest import REPO

pytestmark = pytest.mark.slow
SMALL = ["iterations=2", "prompts.per_iteration=16", "prompts.eval_size=8", "train.epochs=2",
         "tracking.mode=offline", "tracking.project=selfplay-tests"]
WANDB = str(Path(sys.executable).parent / "wandb")


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "selfplay.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def wandb_records(run_file: Path) -> list[dict]:
    """The records of an offline run file as W&B's own reader prints them."""
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_file)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def kill_after_row(process: subprocess.Popen, metrics: Path, iteration: int, stage: str) -> None:
    """SIGKILL the driver's process group as soon as the (iteration, stage) row is in metrics.jsonl."""
    deadline = time.monotonic() + 600
    while True:
        assert process.poll() is None, f"run ended first: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the row never appeared"
        text = metrics.read_text() if metrics.exists() else ""
        complete = text[:text.rfind("\n") + 1].splitlines()
        if any(row["iteration"] == iteration and row["stage"] == stage for row in map(json.loads, complete)):
            break
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def crashed_and_resumed(tmp_path_factory, tiny_policy):
    run_dir = tmp_path_factory.mktemp("mirror") / "run"
    process = subprocess.Popen([sys.executable, "-m", "selfplay.cli", "run", "recipes/quickstart-cpu.yaml",
                                "--run-dir", str(run_dir), *SMALL], cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_after_row(process, run_dir / "metrics.jsonl", 1, "train")
    resumed = cli("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir


def test_every_metrics_row_is_in_wandb_exactly_once_after_a_kill(crashed_and_resumed):
    run_dir = crashed_and_resumed
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stages = [(r["iteration"], r["stage"]) for r in rows if r["stage"] != "train_step"]
    assert len(stages) == len(set(stages)) == 1 + 2 * 6          # baseline + 6 stages x 2 iterations
    files = find_run_files(run_dir)
    assert len(files) == 2                                         # the killed session's and the resumed one's
    history = [record["history"] for f in files for record in wandb_records(f) if record["type"] == "history"]
    steps = sorted(h["step"]["num"] for h in history)
    assert steps == list(range(len(rows)))                         # each row once, none missing
    for h in history:
        expected = wandb_row(rows[h["step"]["num"]])
        assert {k: h["item"][k] for k in expected} == pytest.approx(expected)
    train_steps = [r["global_step"] for r in rows if r["stage"] == "train_step"]
    assert train_steps == list(range(len(train_steps))) and len(train_steps) == 2 * 2 * 2  # 2 iters x 2 epochs x 2


def test_a_fork_is_a_new_wandb_run_in_the_parents_group_naming_its_parent(crashed_and_resumed, tmp_path):
    parent_dir = crashed_and_resumed
    fork_dir = tmp_path / "fork"
    result = cli("fork", str(parent_dir), "--from-iteration", "2", "train.beta=0.05", "--name", "mirror-fork",
                 "--run-dir", str(fork_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    parent = json.loads((parent_dir / "run.json").read_text())
    (fork_file,) = find_run_files(fork_dir)
    run = next(r["run"] for r in wandb_records(fork_file) if r["type"] == "run")
    assert run["run_id"] != parent["wandb_run_id"] and run["run_group"] == parent["name"]
    config = run["config"]["update"]["selfplay"]
    assert config["parent"]["run_id"] == parent["run_id"] and config["parent"]["iteration"] == 2
