"""Driver.run_stage on its own (no engines): what counts as done when a stage fails."""

import errno
import json

import pytest

from selfplay.driver import Driver, StageFailed
from selfplay.recipe import load_recipe

from conftest import REPO


class Records:
    def __init__(self):
        self.lines = []

    def record(self, iteration, stage, metrics, log_wandb=True):
        self.lines.append((iteration, stage))


@pytest.fixture
def driver(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "quickstart-cpu.yaml", ["max_stage_retries=1"])
    driver = Driver(recipe, tmp_path)
    driver.info, driver.packages, driver.code_version, driver.tracker = {"run_id": "test"}, {}, "x", Records()
    return driver


def test_disk_full_during_a_stage_counts_nothing(driver, tmp_path):
    def body(tmp):
        (tmp / "samples.parquet").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "samples.parquet"))

    with pytest.raises(OSError, match="No space left"):
        driver.run_stage(1, "generate", {}, {}, body)
    assert not (tmp_path / "iter-001/generate").exists()          # nothing half-written counts
    assert "OSError" in json.loads((tmp_path / "iter-001/generate.failed.json").read_text())["error"]
    assert driver.tracker.lines == []


def test_a_failing_stage_is_not_retried_unless_a_worker_died(driver, tmp_path):
    calls = []

    def body(tmp):
        calls.append(1)
        raise ValueError("bad judge output")

    with pytest.raises(StageFailed, match="iteration 1 stage annotate failed after 1 attempt"):
        driver.run_stage(1, "annotate", {}, {}, body)
    assert len(calls) == 1


def test_a_dead_worker_is_retried_then_the_stage_commits(driver, tmp_path):
    import ray.exceptions

    calls = []

    def body(tmp):
        calls.append(1)
        if len(calls) == 1:
            raise ray.exceptions.RayActorError()
        (tmp / "out.txt").write_text("ok")
        return ["out.txt"], {"n": 1}, {}

    manifest = driver.run_stage(1, "train", {"a": "b"}, {"c": 1}, body)
    assert len(calls) == 2 and manifest["status"] == "done"
    assert not (tmp_path / "iter-001/train.failed.json").exists()  # cleared by the success
    assert driver.tracker.lines == [(1, "train")]
    assert driver.run_stage(1, "train", {"a": "b"}, {"c": 1}, body) == manifest  # done: skipped
    assert len(calls) == 2
