"""The evaluate stage through the real pipeline: every `evaluate.every` iterations, against the
initial and the previous evaluated policy, by a separate evaluation judge beside the training
judge, with the length-controlled win rate, KL to the initial policy and diversity."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from selfplay.evaluate.agreement import judge_agreement

from fault_runs import cli

pytestmark = pytest.mark.slow
SETTINGS = ["iterations=3", "evaluate.every=2", "prompts.per_iteration=8", "prompts.eval_size=8", "train.epochs=2",
            "tracking.wandb=false", "evaluate.judge.type=function",
            "evaluate.judge.function=selfplay.judges:shorter_is_better"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_policy):
    run_dir = tmp_path_factory.mktemp("evaluation") / "run"
    result = cli("run", "recipes/quickstart-cpu.yaml", "--run-dir", str(run_dir), *SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def metrics(run_dir, iteration):
    return json.loads((run_dir / f"iter-{iteration:03d}/evaluate/metrics.json").read_text())


def comparisons(run_dir, iteration, opponent, judge):
    rows = pq.read_table(run_dir / f"iter-{iteration:03d}/evaluate/comparisons.parquet").to_pylist()
    return [r for r in rows if r["opponent"] == opponent and r["judge"] == judge]


def per_prompt_mean(rows):
    by_prompt = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row["win"])
    return float(np.mean([np.mean(wins) for wins in by_prompt.values()]))


def test_evaluation_runs_every_n_iterations_and_at_the_last(run):
    run_dir, result = run
    assert [t for t in (1, 2, 3) if (run_dir / f"iter-{t:03d}/evaluate/manifest.json").exists()] == [2, 3]
    assert not (run_dir / "iter-001/eval-gen").exists()
    status = cli("status", str(run_dir)).stdout
    assert "iter   1  train" in status and "iter   1  evaluate" not in status and "iter   2  evaluate" in status
    summary = [line for line in result.stdout.splitlines() if line.startswith("│    1 ")]
    assert summary and summary[0].split("│")[2].strip() == "-"        # no win rate for iteration 1


def test_win_rates_against_the_initial_and_the_previous_policy(run):
    run_dir, _ = run
    second, third = metrics(run_dir, 2), metrics(run_dir, 3)
    # iteration 2 is the first evaluation: its previous evaluated policy is the initial one
    assert second["win_rate_vs_previous"] == second["win_rate_vs_initial"]
    inputs = json.loads((run_dir / "iter-003/evaluate/manifest.json").read_text())["inputs"]
    eval_gen_2 = json.loads((run_dir / "iter-002/eval-gen/manifest.json").read_text())["outputs"]["samples.parquet"]
    assert inputs["previous_samples"] == eval_gen_2
    for iteration, values in ((2, second), (3, third)):
        assert values["win_rate_vs_initial"] == pytest.approx(
            per_prompt_mean(comparisons(run_dir, iteration, "initial", "evaluation")))
        assert values["win_rate_vs_initial_ci_low"] <= values["win_rate_vs_initial"] <= values["win_rate_vs_initial_ci_high"]
    assert third["win_rate_vs_previous"] == pytest.approx(per_prompt_mean(comparisons(run_dir, 3, "previous", "evaluation")))


def test_the_training_judge_is_reported_beside_the_evaluation_judge(run):
    run_dir, _ = run
    values = metrics(run_dir, 3)
    by_eval, by_train = comparisons(run_dir, 3, "initial", "evaluation"), comparisons(run_dir, 3, "initial", "training")
    assert [(r["prompt_id"], r["policy_sample"], r["other_sample"]) for r in by_eval] == \
        [(r["prompt_id"], r["policy_sample"], r["other_sample"]) for r in by_train]
    assert values["win_rate_vs_initial_training_judge"] == pytest.approx(per_prompt_mean(by_train))
    assert values["judge_agreement_vs_initial"] == pytest.approx(
        judge_agreement([r["win"] for r in by_eval], [r["win"] for r in by_train]))
    # the policy trains toward more letter 'e' (the training judge): it wins by that judge
    assert values["win_rate_vs_initial_training_judge"] > 0.5


def test_length_kl_and_diversity_are_recorded(run):
    run_dir, _ = run
    values = metrics(run_dir, 3)
    assert 0.0 <= values["length_controlled_win_rate_vs_initial"] <= 1.0
    assert values["kl_vs_initial_ci_low"] <= values["kl_vs_initial"] <= values["kl_vs_initial_ci_high"]
    assert values["kl_vs_initial_ci_low"] > 0                           # three iterations moved the policy
    samples = pq.read_table(run_dir / "iter-003/eval-gen/samples.parquet").to_pylist()
    lengths = [len(s["token_ids"]) for s in samples]
    assert values["response_tokens_p50"] == float(np.percentile(lengths, 50))
    assert 0.0 < values["distinct_2"] <= 1.0 and 0.0 < values["distinct_3"] <= 1.0
    pairs = json.loads((run_dir / "iter-003/pairs/manifest.json").read_text())["metrics"]
    assert values["mean_chosen_win_rate"] == pairs["mean_chosen_win_rate"] > values["mean_rejected_win_rate"]
