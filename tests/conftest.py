"""Shared test setup: tiny models cached once per machine, W&B offline, no hub access."""

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("SELFPLAY_CACHE", str(Path.home() / ".cache" / "selfplay-tests"))
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As the actors get it (selfplay.cluster.start_ray): the drivers and in-process engines of the two
# test workers share 2 cores too
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_policy() -> Path:
    from selfplay.models import resolve_model

    return resolve_model("tiny:llama", seed=0)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster of 4 logical CPUs for one test module (engines, judge replicas)."""
    import ray

    from selfplay.cluster import start_ray

    start_ray(None, 4)
    yield
    ray.shutdown()


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `build(folder)` fills, built once for the whole test session: under xdist the
    workers share it (the first to ask builds it, the others wait for it), as a session fixture
    alone would run once per worker. Read-only to its users: copy it to change it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' basetemps are siblings in one session folder
    folder, done = root / f"built-once-{name}", root / f"built-once-{name}.done"
    with FileLock(str(root / f"built-once-{name}.lock"), timeout=1800):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker's failed build: build again
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def small_unbroken_run(tmp_path_factory, tiny_policy) -> dict:
    """The final state of one unbroken run with fault_runs.SMALL settings, shared by the tests
    that stop a run (test_faults, test_signals) and compare its resumed end with this one."""
    from fault_runs import final_state, unbroken_run

    run_dir = built_once(tmp_path_factory, "small-unbroken-run", lambda folder: unbroken_run(folder / "run")) / "run"
    return {**final_state(run_dir), "run_dir": run_dir}


# The shared 2-iteration run: 8 prompts a iteration, one epoch, W&B offline
TINY_RUN = ["iterations=2", "prompts.per_iteration=8", "prompts.eval_size=8", "train.epochs=1",
            "tracking.project=selfplay-tests"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_policy) -> tuple[Path, Path]:
    """One real run (quickstart recipe, TINY_RUN, named `base`) for the tests that fork, redo or
    compare a finished run, and a copy of it taken before any test touched it: a test that forks
    the run (the fork is recorded in the parent's run.json) or redoes it uses its own copy.
    Built once per xdist worker, where it stays: its W&B artifacts refer to its files by path."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("tiny-run")
    run_dir = root / "base"
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "run", "recipes/quickstart-cpu.yaml", "--run-dir",
                             str(run_dir), "name=base", *TINY_RUN], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    pristine = tmp_path_factory.mktemp("tiny-run-copy") / "base"
    shutil.copytree(run_dir, pristine, symlinks=True)
    return run_dir, pristine


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    import json

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something about topic {i}."}) + "\n" for i in range(40)))
    return path


# The slowest test files first (serial seconds on 2 cores, clean clone: faults 405, gpu_sharing 240,
# architectures 230, multinode 204, ...): under `-n 2 --dist loadfile` (CI) each process takes the
# next file when it is free, so a long file left to the end would run while the other process idles.
SLOWEST_FIRST = ["test_faults.py", "test_algorithms.py", "test_gpu_sharing.py", "test_architectures.py",
                 "test_multinode.py", "test_sppo_run.py", "test_signals.py", "test_scale_free_run.py",
                 "test_judges_in_pipeline.py", "test_trainer.py", "test_wandb_mirror.py", "test_launch_scripts.py",
                 "test_curry_tiers.py", "test_prompt_edits.py", "test_fork_integrity.py", "test_compare_report.py"]


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
