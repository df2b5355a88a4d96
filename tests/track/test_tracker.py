"""metrics.jsonl is the source of truth and W&B (offline here, read back from its files) mirrors
it row for row, whatever a crash left behind."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from selfplay.track.tracker import STEP_STAGE, Tracker, wandb_row
from selfplay.track.wandb_offline import find_run_files, read_history


def recipe(wandb=True):
    return SimpleNamespace(tracking=SimpleNamespace(wandb=wandb, mode="offline", project="selfplay-tests",
                                                    group=None, entity=None))


INFO = {"run_id": "r1", "name": "mirror-test", "wandb_run_id": "mirror-test-r1", "parent": None}


def lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_stage_result_is_recorded_once_with_its_steps_first(tmp_path):
    tracker = Tracker(tmp_path, INFO, recipe(wandb=False), {})
    steps = [{"step": 1, "loss": 2.0, "global_step": 7}, {"step": 2, "loss": 1.0, "global_step": 8}]
    tracker.record(1, "train", {"loss": 1.5, "seconds": 3.0}, started_at=100.0, steps=steps)
    tracker.record(1, "train", {"loss": 1.5, "seconds": 3.0}, started_at=100.0, steps=steps)  # resume: skipped
    tracker.record(1, "train", {"loss": 1.4, "seconds": 2.0}, started_at=200.0)                # a redo: kept
    assert [(r["stage"], r.get("global_step"), r["started_at"]) for r in lines(tmp_path)] == [
        (STEP_STAGE, 7, 100.0), (STEP_STAGE, 8, 100.0), ("train", None, 100.0), ("train", None, 200.0)]


def test_a_block_torn_by_a_crash_is_dropped_and_written_again_whole(tmp_path):
    path = tmp_path / "metrics.jsonl"
    done = {"iteration": 1, "stage": "generate", "started_at": 1.0, "seconds": 1.0}
    step = {"iteration": 1, "stage": STEP_STAGE, "started_at": 2.0, "step": 1, "global_step": 0, "loss": 3.0}
    path.write_text(json.dumps(done) + "\n" + json.dumps(step) + "\n" + '{"iteration": 1, "stage": "tr')
    tracker = Tracker(tmp_path, INFO, recipe(wandb=False), {})
    assert lines(tmp_path) == [done]            # the train stage's block never finished: gone
    tracker.record(1, "train", {"loss": 3.0, "seconds": 5.0}, started_at=2.0,
                   steps=[{"step": 1, "global_step": 0, "loss": 3.0}])
    assert [r["stage"] for r in lines(tmp_path)] == ["generate", STEP_STAGE, "train"]


def test_a_damaged_line_is_dropped_with_its_block_and_recorded_again(tmp_path, caplog):
    """Issue 19 finding 13: a damaged line, anywhere, is no JSONDecodeError at start; its stage's
    block is written again (from the manifest, by the pipeline's record) when that stage is found done."""
    path = tmp_path / "metrics.jsonl"
    generate = {"iteration": 1, "stage": "generate", "started_at": 1.0, "seconds": 1.0}
    step = {"iteration": 1, "stage": STEP_STAGE, "started_at": 2.0, "step": 1, "global_step": 0, "loss": 3.0}
    evaluate = {"iteration": 1, "stage": "evaluate", "started_at": 3.0, "seconds": 1.0}
    path.write_text("\n".join([json.dumps(generate), json.dumps(step), '{"iteration": 1, "stage": "tr#in": 3.0}',
                               "[1, 2]", json.dumps(evaluate)]) + "\n")
    with caplog.at_level("WARNING", logger="selfplay"):
        tracker = Tracker(tmp_path, INFO, recipe(wandb=False), {})
    assert "2 damaged line(s) dropped (line 3, 4)" in caplog.text
    assert lines(tmp_path) == [generate, evaluate]   # the train step lost its stage row: its block goes
    tracker.record(1, "train", {"loss": 3.0, "seconds": 5.0}, started_at=2.0,
                   steps=[{"step": 1, "global_step": 0, "loss": 3.0}])
    tracker.record(1, "evaluate", {"seconds": 1.0}, started_at=3.0)  # found done again: already there
    assert [r["stage"] for r in lines(tmp_path)] == ["generate", "evaluate", STEP_STAGE, "train"]


def test_wandb_row_keys():
    assert wandb_row({"iteration": 2, "stage": "evaluate", "started_at": 5.0, "win_rate": 0.7, "ok": True,
                      "note": "x"}) == {"iteration": 2, "evaluate/win_rate": 0.7}
    assert wandb_row({"iteration": 2, "stage": STEP_STAGE, "started_at": 5.0, "step": 3, "global_step": 19,
                      "loss": 0.5}) == {"train_step/iteration": 2, "train_step/global_step": 19, "train_step/loss": 0.5}


@pytest.mark.parametrize("lost", [0, 2])
def test_offline_wandb_gets_every_row_exactly_once_after_a_restart(tmp_path, lost):
    """The rows W&B missed (the driver died after writing them to metrics.jsonl, before W&B
    stored them) are logged by the next start, and none twice."""
    first = Tracker(tmp_path, INFO, recipe(), {})
    for t in range(3):
        first.record(t, "generate", {"seconds": float(t)}, started_at=float(t))
    first.finish()
    path = tmp_path / "metrics.jsonl"
    extra = [{"iteration": 3 + i, "stage": "generate", "started_at": 10.0 + i, "seconds": 1.0} for i in range(lost)]
    with open(path, "a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in extra))
    second = Tracker(tmp_path, INFO, recipe(), {})
    second.record(9, "evaluate", {"win_rate": 0.5, "seconds": 1.0}, started_at=99.0)
    second.finish()
    files = find_run_files(tmp_path)
    assert len(files) == 2
    history = [row for f in files for row in read_history(f)]
    assert sorted(row["_step"] for row in history) == list(range(len(lines(tmp_path))))
    for row in history:
        expected = wandb_row(lines(tmp_path)[row["_step"]])
        assert {k: row[k] for k in expected} == expected


def test_a_journal_line_torn_by_a_crash_is_dropped_and_the_next_append_starts_a_fresh_line(tmp_path):
    from selfplay.track.journal import append_journal, read_journal

    path = tmp_path / "record.jsonl"
    assert read_journal(path) == []
    append_journal(path, {"a": 1})
    with open(path, "a") as handle:
        handle.write('{"a": 2, "tor')
    assert read_journal(path) == [{"a": 1}]
    append_journal(path, {"a": 3})
    assert read_journal(path) == [{"a": 1}, {"a": 3}]



def test_a_resumed_driver_opens_its_run_even_when_it_inherits_a_wandb_service_holding_it(tmp_path):
    """A process that used W&B (a notebook, a test process, `wandb beta core start`) passes its
    wandb-core service to its children in WANDB_SERVICE. A driver SIGKILLed there leaves its run
    open in that service, and a resumed driver that joined it was refused ("run ID ... is in use").
    Each driver opens its run in a service of its own, which dies with it."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    wandb_cli = str(Path(sys.executable).parent / "wandb")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    started = subprocess.run([wandb_cli, "beta", "core", "start", "--idle-timeout", "120s"], capture_output=True,
                             text=True, timeout=120, env=env, check=True)
    env["WANDB_SERVICE"] = started.stdout.strip().splitlines()[-1]

    def python(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, str(tmp_path), json.dumps(INFO)], capture_output=True,
                              text=True, timeout=300, cwd=REPO, env=env)

    try:
        killed = python("""
import json, os, signal, sys, wandb
run = wandb.init(project="selfplay-tests", id=json.loads(sys.argv[2])["wandb_run_id"], dir=sys.argv[1],
                 resume="allow", mode="offline")
run.log({"x": 1})
os.kill(os.getpid(), signal.SIGKILL)
""")
        assert killed.returncode == -9, killed.stderr[-2000:]
        resumed = python("""
import json, sys
from pathlib import Path
from types import SimpleNamespace
from selfplay.track.tracker import Tracker
recipe = SimpleNamespace(tracking=SimpleNamespace(wandb=True, mode="offline", project="selfplay-tests", group=None,
                                                  entity=None))
tracker = Tracker(Path(sys.argv[1]), json.loads(sys.argv[2]), recipe, {})
tracker.record(1, "generate", {"seconds": 1.0}, started_at=1.0)
tracker.finish()
""")
    finally:
        subprocess.run([wandb_cli, "beta", "core", "stop"], capture_output=True, timeout=120, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert lines(tmp_path)[-1]["stage"] == "generate"
