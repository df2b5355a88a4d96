"""A fork keeps standing on exactly what it was forked from, through the real engines: a parent
run, a fork from iteration 2 with another beta, then the parent redoes iteration 1 with another
beta; resuming the fork changes nothing of its results, and nothing of the parent was deleted
(its old iterations are in superseded/ with the reason)."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "selfplay.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def results(run_dir: Path, iterations) -> dict:
    """What a run produced: each iteration's policy digest and evaluation metrics."""
    out = {}
    for t in iterations:
        train = json.loads((run_dir / f"iter-{t:03d}/train/manifest.json").read_text())
        metrics = json.loads((run_dir / f"iter-{t:03d}/evaluate/metrics.json").read_text())
        out[t] = (train["outputs"]["policy"], metrics)
    return out


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def parent_run(tiny_run):
    """The untouched copy of the shared tiny run (conftest.tiny_run): this test redoes it."""
    return tiny_run[1]


def test_a_parent_redo_leaves_the_fork_as_it_was(parent_run, tmp_path):
    parent, fork = parent_run, tmp_path / "beta-fork"
    annotate = json.loads((parent / "iter-001/annotate/manifest.json").read_text())
    judge_source = hashlib.sha256((REPO / "selfplay/judges.py").read_bytes()).hexdigest()
    assert annotate["config"]["function_source_sha256"] == judge_source      # the scoring function's identity
    forked = cli("fork", parent, "--from-iteration", 2, "train.beta=0.05", "--name", "beta-fork", "--run-dir", fork)
    assert forked.returncode == 0, forked.stderr[-3000:]
    assert (fork / "iter-001").is_dir() and not (fork / "iter-001").is_symlink()
    fork_before = results(fork, [2])
    parent_before = file_hashes(parent / "iter-001") | {f"../iter-002/{k}": v
                                                        for k, v in file_hashes(parent / "iter-002").items()}

    redo = cli("resume", parent, "--from-iteration", 1, "train.beta=0.3", "--allow-changes")
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert results(parent, [1])[1][0] != json.loads((fork / "iter-001/train/manifest.json").read_text())[
        "outputs"]["policy"]                                       # the parent's iteration 1 really changed

    resumed = cli("resume", fork)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("done earlier, skipped") == 1 + 6     # the baseline and iteration 2's stages
    assert not re.search(r"iter \d+ \S+ +running", resumed.stderr)
    assert results(fork, [2]) == fork_before
    assert not (fork / "superseded").exists()

    # nothing of the parent was deleted: its old iterations sit in superseded/ with the reason
    [moved] = (parent / "superseded").iterdir()
    assert file_hashes(moved / "iter-001") | {f"../iter-002/{k}": v
                                              for k, v in file_hashes(moved / "iter-002").items()} == parent_before
    reason = json.loads((moved / "reason.json").read_text())
    assert reason["from_iteration"] == 1 and reason["changed_keys"] == ["train.beta"]
    change = json.loads((parent / "run.json").read_text())["recipe_changes"][-1]
    assert change["keys"] == ["train.beta"] and change["previous"]["train"]["beta"] == 0.02

    status = cli("status", fork).stdout
    assert "(shared with parent run)" in status and "pending" not in status
    tree = cli("lineage", fork).stdout
    assert "fork from iteration 2" in tree and "the parent has redone that iteration since" in tree
