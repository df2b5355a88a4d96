"""W&B mirrors metrics.jsonl exactly across a crash: the driver is SIGKILLed right after a stage
row reached metrics.jsonl, `selfplay resume` finishes the run, and W&B's own reader
(`wandb leet inspect --json`) finds every metrics.jsonl row exactly once in the run's offline
files. A fork is a new W&B run in the parent's group whose config names its parent.
The same files hold each stage's reference artifact (policy, samples, pairs) and each
iteration's `examples` Table exactly once, and the fork's use of its parent's policy."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfplay.runs import StageDir
from selfplay.track.tracker import wandb_row
from selfplay.track.wandb_artifacts import STAGE_ARTIFACTS
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


@pytest.fixture(scope="module")
def forked(crashed_and_resumed, tmp_path_factory):
    fork_dir = tmp_path_factory.mktemp("fork") / "fork"
    result = cli("fork", str(crashed_and_resumed), "--from-iteration", "2", "train.beta=0.05", "--name", "mirror-fork",
                 "--run-dir", str(fork_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return fork_dir


def stage_artifacts(run_dir: Path) -> list[dict]:
    """The run's own artifact records (not the ones W&B makes for Tables), from W&B's reader."""
    found = [r["artifact"] for f in find_run_files(run_dir) for r in wandb_records(f) if r["type"] == "artifact"]
    return [{**a, "metadata": json.loads(a["metadata"])} for a in found if "stage" in a.get("metadata", "")]


def test_each_stage_output_is_one_reference_artifact_and_each_iteration_one_examples_table(crashed_and_resumed):
    run_dir = crashed_and_resumed
    logged = [a for a in stage_artifacts(run_dir) if not a.get("use_after_commit")]
    expected = []
    for folder in sorted(run_dir.glob("iter-*/*/manifest.json")):
        manifest = json.loads(folder.read_text())
        kind = STAGE_ARTIFACTS.get(manifest["stage"])
        if kind:
            expected.append((manifest["stage"], manifest["iteration"], manifest["outputs"][kind.output]))
    got = [(a["metadata"]["stage"], a["metadata"]["iteration"], a["metadata"]["digest"]) for a in logged]
    assert sorted(got) == sorted(expected) and len(expected) == 1 + 2 * 4  # baseline; generate, pairs, train, eval-gen
    for artifact in logged:
        meta = artifact["metadata"]
        assert f"iter-{meta['iteration']:03d}" in artifact["aliases"]
        folder = StageDir(run_dir.resolve(), meta["iteration"], meta["stage"]).path
        assert all(e["ref"].startswith(folder.as_uri() + "/") and "local_path" not in e
                   for e in artifact["manifest"]["contents"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tables = {}
    for run_file in find_run_files(run_dir):
        for record in wandb_records(run_file):
            item = record.get("history", {}).get("item", {})
            if "examples.path" in item:
                assert record["history"]["step"]["num"] not in tables
                tables[record["history"]["step"]["num"]] = json.loads((run_file.parent / "files" / item["examples.path"]).read_text())
    evaluate_steps = [i for i, r in enumerate(rows) if r["stage"] == "evaluate"]
    assert sorted(tables) == evaluate_steps
    ordered = [tables[step]["data"] for step in sorted(tables)]
    prompt_ids = [[row[1] for row in data] for data in ordered]
    assert prompt_ids[0] and all(ids == prompt_ids[0] for ids in prompt_ids)  # the same prompts side by side
    assert [{row[0] for row in data} for data in ordered] == [{1}, {2}]


def test_a_forks_first_iteration_uses_its_parents_policy_artifact(crashed_and_resumed, forked):
    parent = json.loads((crashed_and_resumed / "run.json").read_text())
    uses = [a for a in stage_artifacts(forked) if a.get("use_after_commit")]
    policy = json.loads((crashed_and_resumed / "iter-001/train/manifest.json").read_text())["outputs"]["policy"]
    used = [(a["name"], a["metadata"]["digest"]) for a in uses]
    # the policy it starts from, and whatever else of the parent's its stages read (evaluate: the
    # previous iteration's eval samples), each once
    assert (f"{parent['name']}-policy", policy) in used and len(used) == len(set(used))
    assert all(a["name"].startswith(f"{parent['name']}-") and a["metadata"]["run_id"] == parent["run_id"]
               for a in uses)
    assert all(e["ref"].startswith(crashed_and_resumed.resolve().as_uri() + "/")
               for a in uses for e in a["manifest"]["contents"])
    train = next(a for a in stage_artifacts(forked) if a["metadata"]["stage"] == "train" and not a.get("use_after_commit"))
    assert train["metadata"]["inputs"]["policy"] == f"{parent['name']}-policy:iter-001"


def test_a_fork_is_a_new_wandb_run_in_the_parents_group_naming_its_parent(crashed_and_resumed, forked):
    parent_dir, fork_dir = crashed_and_resumed, forked
    parent = json.loads((parent_dir / "run.json").read_text())
    (fork_file,) = find_run_files(fork_dir)
    run = next(r["run"] for r in wandb_records(fork_file) if r["type"] == "run")
    assert run["run_id"] != parent["wandb_run_id"] and run["run_group"] == parent["name"]
    config = run["config"]["update"]["selfplay"]
    assert config["parent"]["run_id"] == parent["run_id"] and config["parent"]["iteration"] == 2
