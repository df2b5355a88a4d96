"""Crashes lose nothing: a driver SIGKILLed during a stage, a Ray worker killed during
training, a corrupted artifact, a half-committed stage. After `selfplay resume` the run ends
exactly where an unbroken run ends: bit-identical weights, same metrics, one W&B run.

The unbroken run keeps its DeepSpeed ranks from one train stage to the next (its second stage
trains the weights the ranks hold); a run that restarts them every stage, and every resumed run
here (new ranks, policy from disk), ends with the same bytes.
"""

import json
import os
import shutil

import pytest

from selfplay.track.wandb_offline import find_run_files, read_history

from fault_runs import (
    SMALL,
    cli,
    driver_session,
    final_state,
    kill_actors_when,
    kill_when,
    start_cli,
    start_run,
    still_running,
    train_ranks,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def unbroken(small_unbroken_run):
    return small_unbroken_run


def test_sigkill_during_stages_then_resume_matches_an_unbroken_run(tmp_path, unbroken):
    run_dir = tmp_path / "killed"
    # 1) the driver alone killed (as by the OOM killer) in the middle of iteration 1's training
    #    (after at least one DeepSpeed checkpoint): Ray's dashboard and runtime-env agents outlive it
    with driver_session(start_run(run_dir)) as process:
        first_driver = kill_when(process, run_dir / "iter-001/train.checkpoints/latest", group=False)
    assert not (run_dir / "iter-001/train/manifest.json").exists()
    status = cli("status", str(run_dir)).stdout
    assert "train          interrupted" in status and "generate       done" in status
    # 2) resumed, then killed while iteration 2 generates; that driver stopped the first one's leftovers
    with driver_session(start_cli("resume", str(run_dir), hold="2:generate")) as process:
        kill_when(process, run_dir / "iter-002/generate.tmp")
    assert still_running(first_driver) == [], "processes of the killed driver outlived the next one"
    # 3) a crash between the rename of a stage folder and its manifest, and a half-written stage
    (run_dir / "iter-001/evaluate/manifest.json").unlink()
    (run_dir / "iter-001/pairs.tmp").mkdir()
    (run_dir / "iter-001/pairs.tmp/pairs.parquet").write_bytes(b"half")
    result = cli("resume", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "iter 1 generate  done earlier, skipped" in result.stderr      # finished stages are not recomputed
    assert "iter 1 evaluate  running" in result.stderr                   # the unmanifested one is redone
    resumed = final_state(run_dir)
    assert resumed["weights"] == unbroken["weights"]                     # bit-identical final policy
    assert resumed["metrics"] == unbroken["metrics"]
    assert resumed["samples"] == unbroken["samples"] and resumed["pairs"] == unbroken["pairs"]
    assert not list(run_dir.glob("iter-*/*.tmp")) and not list(run_dir.glob("iter-*/train.checkpoints"))
    # one W&B run across the three driver processes
    files = find_run_files(run_dir)
    assert len({f.name for f in files}) == 1 and len(files) == 3
    evaluated = [row["iteration"] for f in files for row in read_history(f) if "evaluate/win_rate_vs_initial" in row]
    recorded = [row["iteration"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                if row["stage"] == "evaluate"]
    assert set(evaluated) == {1, 2} and sorted(evaluated) == sorted(recorded)   # W&B mirrors metrics.jsonl


def test_ranks_restarted_every_stage_end_where_long_lived_ranks_do(tmp_path, unbroken):
    assert train_ranks(unbroken["run_dir"], 2) == {**train_ranks(unbroken["run_dir"], 2), "reused": True,
                                                   "policy_from": "memory", "reference_from": "policy"}
    run_dir = tmp_path / "restarted"
    result = cli("run", "recipes/quickstart-cpu.yaml", "--run-dir", str(run_dir), *SMALL, "train.keep_ranks=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [train_ranks(run_dir, t)["reused"] for t in (1, 2)] == [False, False]
    assert train_ranks(run_dir, 2)["policy_from"] == "disk"
    restarted = final_state(run_dir)
    assert restarted["weights"] == unbroken["weights"] and restarted["metrics"] == unbroken["metrics"]
    assert restarted["pairs"] == unbroken["pairs"]


def test_corrupted_artifact_is_detected_and_redone(tmp_path, unbroken):
    run_dir = tmp_path / "corrupt"
    shutil.copytree(unbroken["run_dir"], run_dir, symlinks=True)  # a finished run of its own
    samples = run_dir / "iter-002/generate/samples.parquet"
    assert cli("verify", str(run_dir)).returncode == 0
    samples.write_bytes(samples.read_bytes()[:-100])                     # truncated on disk
    verified = cli("verify", str(run_dir))
    assert verified.returncode == 1 and "1 stage(s) damaged" in verified.stderr
    assert [line for line in verified.stdout.splitlines() if "DAMAGED" in line] == \
        ["iter   2  generate       DAMAGED  samples.parquet no longer hash to the manifest's record"]
    # issue 19 finding 3: a same-size rewrite with its mtime set back (no size or mtime tells),
    # which resume must notice by the inode's ctime and re-hash
    evaluated = run_dir / "iter-001/evaluate/eval.parquet"
    before, data = evaluated.stat(), bytearray(evaluated.read_bytes())
    data[len(data) // 2] ^= 0xFF
    evaluated.write_bytes(bytes(data))
    os.utime(evaluated, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (evaluated.stat().st_size, evaluated.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    result = cli("resume", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "iter 2 generate  running" in result.stderr
    assert f"iter 1 evaluate: {evaluated} changed since it was committed" in result.stderr, result.stderr[-3000:]
    assert "iter 1 evaluate  running" in result.stderr
    assert "iter 2 train     done earlier, skipped" in result.stderr       # same samples again: nothing downstream redone
    assert final_state(run_dir)["weights"] == unbroken["weights"]
    assert cli("verify", str(run_dir)).returncode == 0


def test_killed_training_worker_is_retried(tmp_path, unbroken):
    run_dir = tmp_path / "worker"
    with driver_session(start_run(run_dir)) as process:
        stderr = kill_actors_when(process, run_dir / "iter-002/train.checkpoints/latest", "TrainerRank")
    assert process.returncode == 0, stderr[-3000:]
    assert "a Ray worker died" in stderr and "iter 2 train     running (retry 1)" in stderr
    assert final_state(run_dir)["weights"] == unbroken["weights"]


def test_second_driver_and_changed_recipe_are_refused(tmp_path, tiny_policy):
    from selfplay.runs import RunLock

    run_dir = tmp_path / "locked"
    with RunLock(run_dir):
        result = cli("run", "recipes/quickstart-cpu.yaml", "--run-dir", str(run_dir), *SMALL)
    assert result.returncode == 2 and "in use by another selfplay driver" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unwritable_run_directory_is_a_clear_error():
    result = cli("run", "recipes/quickstart-cpu.yaml", "--run-dir", "/proc/selfplay-run", *SMALL)
    assert result.returncode == 2 and "/proc/selfplay-run" in result.stderr and "Traceback" not in result.stderr


def test_dead_engine_without_retries_stops_clearly_then_resume_finishes(tmp_path, unbroken):
    run_dir = tmp_path / "engine"
    # the engine idles while iteration 1 trains; the next stage that needs it finds it dead
    with driver_session(start_run(run_dir, "max_stage_retries=0")) as process:
        stderr = kill_actors_when(process, run_dir / "iter-001/train.checkpoints/latest", "VLLMEngine")
    assert process.returncode == 1
    error_lines = [line for line in stderr.splitlines() if line.startswith("selfplay: error:")]
    assert len(error_lines) == 1 and "iteration 1 stage eval-gen failed after 1 attempt" in error_lines[0]
    assert "selfplay resume" in error_lines[0]
    status = cli("status", str(run_dir)).stdout
    assert "eval-gen       failed" in status and "ActorDiedError" in status and "train          done" in status
    result = cli("resume", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert final_state(run_dir)["weights"] == unbroken["weights"]
