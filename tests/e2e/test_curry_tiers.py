"""Curry-DPO's tiers end to end (real vLLM, DeepSpeed, Ray; recipes/curry-dpo-cpu.yaml): each
iteration trains 3 tiers in turn, each from the previous tier's policy, and the policy learns the
judge's preference (the bootstrap 95% lower bound of the final win rate over 24 eval prompts
exceeds 0.5). A run killed between two tiers resumes to the same bytes as the unbroken run."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from selfplay.evaluate.bootstrap import bootstrap_interval

from conftest import REPO
from fault_runs import cli, driver_session, kill_when, start_cli

pytestmark = pytest.mark.slow
SETTINGS = ["iterations=2", "prompts.eval_size=24", "tracking.wandb=false"]
TIERS = ["train-tier1", "train-tier2", "train"]


def manifest(run_dir, iteration, stage):
    return json.loads((run_dir / f"iter-{iteration:03d}/{stage}/manifest.json").read_text())


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, tiny_policy):
    run_dir = tmp_path_factory.mktemp("curry") / "unbroken"
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "run", "recipes/curry-dpo-cpu.yaml", "--run-dir",
                             str(run_dir), *SETTINGS], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_each_tier_trains_its_rank_from_the_previous_tiers_policy_and_the_policy_learns(unbroken):
    for iteration in (1, 2):
        pairs = pq.read_table(unbroken / f"iter-{iteration:03d}/pairs/pairs.parquet")
        entering = manifest(unbroken, iteration, "generate")["inputs"]["policy"]
        for tier, stage in enumerate(TIERS, start=1):
            trained = manifest(unbroken, iteration, stage)
            assert trained["curriculum"]["tier"] == tier and trained["curriculum"]["rank"] == tier - 1
            tier_pairs = pq.read_table(unbroken / f"iter-{iteration:03d}/{stage}/train_pairs.parquet")
            assert set(tier_pairs.column("rank").to_pylist()) == {tier - 1}
            assert tier_pairs.num_rows == trained["metrics"]["pairs"] == pairs.column("rank").to_pylist().count(tier - 1)
            # it starts from, and is scored against, the policy the tier before it made
            assert trained["inputs"]["policy"] == trained["reference"]["digest"] == entering
            entering = trained["outputs"]["policy"]
        assert manifest(unbroken, iteration, "eval-gen")["inputs"]["policy"] == entering   # the last tier's
    final = pq.read_table(unbroken / "iter-002/evaluate/eval.parquet").column("win_rate").to_pylist()
    lower, upper = bootstrap_interval(final, resamples=2000, seed=0)
    rates = [manifest(unbroken, t, "evaluate")["metrics"]["win_rate_vs_initial"] for t in (1, 2)]
    print(f"curry tiers: win_rate_vs_initial {rates}, final 95% interval ({lower:.3f}, {upper:.3f})")
    assert lower > 0.5, (rates, lower)


def test_a_run_killed_between_two_tiers_resumes_to_the_unbroken_runs_bytes(unbroken, tmp_path):
    run_dir = tmp_path / "killed"
    with driver_session(start_cli("run", "recipes/curry-dpo-cpu.yaml", "--run-dir", str(run_dir), *SETTINGS,
                                  hold="2:train-tier2")) as process:
        kill_when(process, run_dir / "iter-002/train-tier2.tmp")   # tier 1 committed, tier 2 started
    assert (run_dir / "iter-002/train-tier1/manifest.json").exists()
    assert not (run_dir / "iter-002/train-tier2/manifest.json").exists()
    result = cli("resume", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "iter 2 train-tier1 done earlier, skipped" in result.stderr
    resumed = manifest(run_dir, 2, "train-tier2")
    assert resumed["ranks"]["policy_from"] == "disk"       # new ranks: tier 1's policy from its folder
    for stage in TIERS:
        assert manifest(run_dir, 2, stage)["outputs"] == manifest(unbroken, 2, stage)["outputs"]
    assert (run_dir / "iter-002/train/policy/model.safetensors").read_bytes() == \
           (unbroken / "iter-002/train/policy/model.safetensors").read_bytes()
    assert manifest(run_dir, 2, "evaluate")["metrics"] == manifest(unbroken, 2, "evaluate")["metrics"]
