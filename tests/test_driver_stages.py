"""pipeline.run_stage on its own (no engines): what counts as done when a stage fails."""

import errno
import json
import sys

import pytest
from stage_helpers import BodyStage, RecordingTracker

from selfplay.context import RunContext
from selfplay.pipeline import StageFailed, run_stage
from selfplay.recipe import load_recipe

from conftest import REPO


@pytest.fixture
def ctx(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "quickstart-cpu.yaml", ["max_stage_retries=1"])
    return RunContext(run_dir=tmp_path, recipe=recipe, tracker=RecordingTracker(), info={"run_id": "test"})


def test_disk_full_during_a_stage_counts_nothing(ctx, tmp_path):
    def body(tmp):
        (tmp / "samples.parquet").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "samples.parquet"))

    with pytest.raises(OSError, match="No space left"):
        run_stage(ctx, BodyStage(1, "generate", {}, {}, body))
    assert not (tmp_path / "iter-001/generate").exists()          # nothing half-written counts
    assert "OSError" in json.loads((tmp_path / "iter-001/generate.failed.json").read_text())["error"]
    assert ctx.tracker.lines == []


def test_a_failing_stage_is_not_retried_unless_a_worker_died(ctx, tmp_path):
    calls = []

    def body(tmp):
        calls.append(1)
        raise ValueError("bad judge output")

    with pytest.raises(StageFailed, match="iteration 1 stage annotate failed after 1 attempt"):
        run_stage(ctx, BodyStage(1, "annotate", {}, {}, body))
    assert len(calls) == 1


def test_a_dead_end_is_not_retried_and_names_its_stage(ctx, tmp_path):
    """A failure only a recipe or data change fixes (failures.DeadEnd) stops the run as is: no
    retry (the recipe allows 1), the stage named, recorded as failed for `selfplay status`,
    nothing committed."""
    from selfplay.failures import DeadEnd

    calls = []

    def body(tmp):
        calls.append(1)
        raise DeadEnd("no training pairs: ...")

    with pytest.raises(DeadEnd, match=r"^iteration 1 stage pairs: no training pairs: \.\.\.$"):
        run_stage(ctx, BodyStage(1, "pairs", {}, {}, body))
    assert len(calls) == 1 and not (tmp_path / "iter-001/pairs").exists()
    assert "no training pairs" in json.loads((tmp_path / "iter-001/pairs.failed.json").read_text())["error"]


def test_a_dead_worker_is_retried_then_the_stage_commits(ctx, tmp_path):
    import ray.exceptions

    calls = []

    def body(tmp):
        calls.append(1)
        if len(calls) == 1:
            raise ray.exceptions.RayActorError()
        (tmp / "out.txt").write_text("ok")
        return ["out.txt"], {"n": 1}, {}

    manifest = run_stage(ctx, BodyStage(1, "train", {"a": "b"}, {"c": 1}, body))
    assert len(calls) == 2 and manifest["status"] == "done"
    assert not (tmp_path / "iter-001/train.failed.json").exists()  # cleared by the success
    assert ctx.tracker.lines == [(1, "train")]
    assert run_stage(ctx, BodyStage(1, "train", {"a": "b"}, {"c": 1}, body)) == manifest  # done: skipped
    assert len(calls) == 2


# -- through a real Ray: which failures are retried, and what the summary names ---------------

@pytest.fixture(scope="module")
def ray_session():
    import ray

    from selfplay.cluster import start_ray

    start_ray(None, 2)
    # the actors below are defined in this test module, which Ray's workers cannot import
    modules = [sys.modules[__name__], sys.modules["stage_helpers"]]
    for module in modules:
        ray.cloudpickle.register_pickle_by_value(module)
    yield
    for module in modules:
        ray.cloudpickle.unregister_pickle_by_value(module)
    ray.shutdown()


def test_an_actor_whose_constructor_raises_is_not_retried_and_named(ray_session, ctx, tmp_path):
    """A model folder the engine cannot load fails the same way every time: one attempt, and the
    summary is the constructor's exception, not the last line of Ray's text (issue 13 finding 7)."""
    import ray
    from pydantic import BaseModel

    class EngineConfig(BaseModel):
        model: int

    class Engine:
        def __init__(self, folder):
            EngineConfig(model=f"{folder} has no config.json")  # pydantic's error, with its URL trailer

        def ready(self):
            return True

    calls = []

    def body(tmp):
        calls.append(1)
        ray.get(ray.remote(num_cpus=0)(Engine).remote("/models/x").ready.remote())

    with pytest.raises(StageFailed) as failure:
        run_stage(ctx, BodyStage(1, "generate", {}, {}, body))
    message = str(failure.value)
    assert len(calls) == 1 and "after 1 attempt" in message
    assert "ValidationError: model: Input should be a valid integer" in message, message
    assert "errors.pydantic.dev" not in message
    recorded = json.loads((tmp_path / "iter-001/generate.failed.json").read_text())
    assert recorded["error"].startswith("ValidationError: model: Input should be a valid integer")
    assert "Traceback" in recorded["traceback"]


def test_a_worker_killed_by_a_signal_is_retried(ray_session, ctx, tmp_path):
    import os
    import signal

    import ray

    class Worker:
        def pid(self):
            return os.getpid()

    calls = []

    def body(tmp):
        calls.append(1)
        worker = ray.remote(num_cpus=0)(Worker).remote()
        pid = ray.get(worker.pid.remote())
        if len(calls) == 1:
            os.kill(pid, signal.SIGKILL)  # as the OOM killer would
            ray.get(worker.pid.remote())
        (tmp / "out.txt").write_text(str(pid))
        return ["out.txt"], {}, {}

    manifest = run_stage(ctx, BodyStage(1, "generate", {}, {}, body))
    assert len(calls) == 2 and manifest["status"] == "done"


def test_a_remote_exception_is_summarized_by_its_own_first_line(ray_session):
    import ray

    from selfplay.failures import error_summary

    def fails():
        raise KeyError("prompt 7")

    with pytest.raises(Exception) as failure:
        ray.get(ray.remote(num_cpus=0)(fails).remote())
    assert error_summary(failure.value) == "KeyError: 'prompt 7'"
    assert error_summary(ValueError("first line\nFor further information visit https://x\nmore")) == \
        "ValueError: first line"


@pytest.mark.slow
def test_training_that_diverges_fails_the_stage_and_commits_nothing(ray_session, ctx, tmp_path, tiny_policy):
    """Issue 13 finding 3 at run time: a huge learning rate (finite, so the recipe allows it) gives
    a non-finite loss or weights; the train stage fails once, with the setting named."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from selfplay.recipe import TrainConfig
    from selfplay.train.ranks import train_policy

    rng = np.random.default_rng(0)
    def ids(n):
        return rng.integers(10, 2000, n).tolist()

    rows = [{"prompt_token_ids": ids(8), "chosen_token_ids": ids(6), "rejected_token_ids": ids(6),
             "chosen_win_rate": 0.8, "rejected_win_rate": 0.2} for _ in range(8)]
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pairs)
    base = dict(loss="sppo", beta=0.1, optimizer="rmsprop", warmup_ratio=0.0, global_batch_size=4, micro_batch_size=4,
                max_length=32, max_prompt_length=16)
    cases = [("train", dict(learning_rate=1e30, epochs=1), "the loss of step 2"),  # weights blow up, then the loss
             ("seed", dict(learning_rate=1e38, epochs=1, global_batch_size=8, micro_batch_size=8),
              "is not finite after training")]                                  # one step: only the weights
    for name, settings, expected in cases:
        config = TrainConfig(**{**base, **settings})
        calls = []

        def body(tmp, calls=calls, config=config):
            calls.append(1)
            train_policy(str(tiny_policy), str(tiny_policy), str(pairs), str(tmp / "policy"), config)
            return ["policy"], {}, {}

        with pytest.raises(StageFailed) as failure:
            run_stage(ctx, BodyStage(1, name, {}, {}, body))
        message = str(failure.value)
        assert len(calls) == 1 and "FloatingPointError: training diverged" in message, message
        assert expected in message and "train.learning_rate" in message, message
        assert not (tmp_path / f"iter-001/{name}").exists()


def test_damaged_scratch_files_are_rebuilt_not_a_traceback(ctx, tmp_path):
    """external_fingerprints.json (a hash cache) and a checkpoint folder's key.json are selfplay's
    scratch: a damaged one is rebuilt (re-hash; checkpoints of unknown inputs dropped)."""
    from selfplay.runs import content_digest, fingerprint
    from selfplay.train.stage import prepare_checkpoints

    (tmp_path / "external_fingerprints.json").write_text('{"trunc')
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("{}\n")
    assert ctx.external(str(pairs)).digest == content_digest(fingerprint(pairs))
    checkpoints = tmp_path / "iter-001" / "train.checkpoints"
    (checkpoints / "step000001").mkdir(parents=True)
    (checkpoints / "key.json").write_text("")
    prepare_checkpoints(checkpoints, {"inputs": 1})
    assert not (checkpoints / "step000001").exists() and json.loads((checkpoints / "key.json").read_text())
