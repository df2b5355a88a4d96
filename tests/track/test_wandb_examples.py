"""W&B's `examples` Table (example generations per iteration) and the x-axes of the panels, read
back from the offline run files with W&B's own reader (`wandb leet inspect --json`): each
table lands once, at its iteration's metrics row, and a table W&B lost is logged again with
its row on resume."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from selfplay.track.examples import example_rows
from selfplay.track.tracker import EXAMPLE_COLUMNS, STEP_STAGE, Tracker
from selfplay.track.wandb_offline import find_run_files

WANDB = str(Path(sys.executable).parent / "wandb")
RECIPE = SimpleNamespace(tracking=SimpleNamespace(wandb=True, mode="offline", project="selfplay-tests",
                                                  group=None, entity=None))
INFO = {"run_id": "r1", "name": "examples-test", "wandb_run_id": "examples-test-r1", "parent": None}


def leet(run_file) -> list[dict]:
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_file)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def examples(iteration):
    return [{"prompt_id": pid, "prompt": f"prompt {pid}", "response": f"answer {pid} at {iteration}",
             "score": pid / 10} for pid in range(3)]


def tables(run_dir) -> dict[int, list[list]]:
    """W&B step -> the rows of the `examples` table logged at it, from every offline file."""
    found = {}
    for run_file in find_run_files(run_dir):
        for record in leet(run_file):
            item = record.get("history", {}).get("item", {})
            if "examples.path" in item:
                step = record["history"]["step"]["num"]
                assert step not in found, f"two tables at step {step}"
                table = json.loads((run_file.parent / "files" / item["examples.path"]).read_text())
                assert table["columns"] == EXAMPLE_COLUMNS
                found[step] = table["data"]
    return found


def iteration(tracker, t):
    tracker.record(t, "train", {"loss": 1.0}, started_at=10.0 * t,
                   steps=[{"step": 1, "global_step": 2 * t, "loss": 1.0}, {"step": 2, "global_step": 2 * t + 1,
                                                                           "loss": 0.5}])
    tracker.record(t, "evaluate", {"win_rate_vs_initial": 0.5 + t / 10}, started_at=10.0 * t + 1)
    tracker.log_examples(t, examples(t))


def expected(t):
    return [[t, r["prompt_id"], r["prompt"], r["response"], r["score"]] for r in examples(t)]


def test_each_iterations_examples_are_one_table_at_its_evaluate_row_even_after_a_lost_row(tmp_path):
    first = Tracker(tmp_path, INFO, RECIPE, {})
    iteration(first, 1)
    iteration(first, 1)  # a resume walking the same stages: nothing new
    first.finish()
    # the driver died after iteration 2's evaluate row and its examples reached the run
    # directory but before W&B wrote them: the next start logs both, the table with its row
    lost = Tracker(tmp_path, INFO, SimpleNamespace(tracking=SimpleNamespace(wandb=False)), {})
    lost.record(2, "evaluate", {"win_rate_vs_initial": 0.7}, started_at=21.0)
    with open(tmp_path / "wandb_examples.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 4, "iteration": 2, "rows": examples(2)}) + "\n")
    second = Tracker(tmp_path, INFO, RECIPE, {})
    second.log_examples(2, examples(2))  # the resumed driver calls it again: no second table
    iteration(second, 3)
    second.finish()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluate_steps = {r["iteration"]: i for i, r in enumerate(rows) if r["stage"] == "evaluate"}
    assert tables(tmp_path) == {evaluate_steps[t]: expected(t) for t in (1, 2, 3)}


def test_examples_for_a_row_wandb_has_passed_are_skipped_not_misplaced(tmp_path):
    tracker = Tracker(tmp_path, INFO, RECIPE, {})
    tracker.record(1, "evaluate", {"win_rate_vs_initial": 0.6}, started_at=1.0)
    tracker.record(2, "generate", {"seconds": 1.0}, started_at=2.0)
    tracker.log_examples(1, examples(1))  # too late: W&B is at iteration 2's row
    with pytest.raises(ValueError, match="response"):
        tracker.log_examples(2, [{"prompt_id": 0, "prompt": "p"}])
    tracker.finish()
    assert tables(tmp_path) == {}
    assert not (tmp_path / "wandb_examples.jsonl").exists()


def test_stage_metrics_are_plotted_by_iteration_and_train_steps_by_global_step(tmp_path):
    tracker = Tracker(tmp_path, INFO, RECIPE, {})
    iteration(tracker, 1)
    tracker.finish()
    (run_file,) = find_run_files(tmp_path)
    records = leet(run_file)
    axes = {m["metric"]["name"]: m["metric"].get("step_metric") for m in records
            if m["type"] == "metric" and "name" in m["metric"]}
    assert axes["train/loss"] == axes["evaluate/win_rate_vs_initial"] == axes["examples"] == "iteration"
    assert axes[f"{STEP_STAGE}/loss"] == axes[f"{STEP_STAGE}/iteration"] == f"{STEP_STAGE}/global_step"
    assert not any("glob_name" in m["metric"] for m in records if m["type"] == "metric")
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    train_rows = [h for h in history if f"{STEP_STAGE}/loss" in h]
    assert [h[f"{STEP_STAGE}/global_step"] for h in train_rows] == [2, 3]
    assert not any("iteration" in h for h in train_rows)  # no stale iteration stamped on a train step


def test_example_rows_take_the_first_sample_of_each_chosen_prompt_in_order():
    samples = pa.Table.from_pylist([
        {"prompt_id": 7, "prompt": "seven", "sample_idx": 1, "text": "7b"},
        {"prompt_id": 3, "prompt": "three", "sample_idx": 0, "text": "3a"},
        {"prompt_id": 7, "prompt": "seven", "sample_idx": 0, "text": "7a"},
        {"prompt_id": 5, "prompt": "five", "sample_idx": 0, "text": "5a"}])
    assert example_rows(samples, [7, 3, 9], {3: 0.25}) == [
        {"prompt_id": 7, "prompt": "seven", "response": "7a", "score": None},
        {"prompt_id": 3, "prompt": "three", "response": "3a", "score": 0.25}]
