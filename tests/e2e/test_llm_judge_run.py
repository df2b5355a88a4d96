"""UltraFeedback's LLM judge through the real pipeline (vLLM CPU for the policy and for the
judge, DeepSpeed gloo, Ray), via the `selfplay` command: recipes/ultrafeedback-cpu.yaml, 2 SPPO
iterations judged by tiny:judge (a tiny model trained to rate by the share of the letter 'e').

- The policy learns the judge's rule through its ratings: the bootstrap 95% lower bound of the
  final win rate under the rule's own quantity (evaluate.judge: letter_e_fraction), over 56
  eval prompts, is above 0.5.
- Every answer is counted (4 aspects x K responses x prompts), with its ratings and rationale.
- A judge whose context cannot hold a question counts every answer missing and fails the stage
  with one line, exit 2: never a crash, never a silent 0."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from selfplay.evaluate.bootstrap import bootstrap_interval

from conftest import REPO

pytestmark = pytest.mark.slow


def cli(*args):
    return subprocess.run([sys.executable, "-m", "selfplay.cli", *args], capture_output=True, text=True,
                          timeout=1500, cwd=REPO)


def manifest(run_dir, iteration, stage):
    return json.loads((run_dir / f"iter-{iteration:03d}/{stage}/manifest.json").read_text())


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory, tiny_policy):
    run_dir = tmp_path_factory.mktemp("llm-judge") / "run"
    result = cli("run", "recipes/ultrafeedback-cpu.yaml", "--run-dir", str(run_dir), "prompts.eval_size=56",
                 "tracking.wandb=false")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_every_answer_is_counted_with_its_ratings_and_rationale(llm_run):
    for t in (1, 2):
        metrics = manifest(llm_run, t, "annotate")["metrics"]
        rows = pq.read_table(llm_run / f"iter-{t:03d}/annotate/judgments.parquet").to_pylist()
        responses = sum(row["num_samples"] for row in rows)
        assert metrics["judge_answers"] == 4 * responses and metrics["judge_missing"] == 0
        assert metrics["judge_missing_fraction"] == 0.0 and metrics["judge_retried"] == 0
        for row in rows:
            ratings = np.array(row["ratings"], dtype=float)
            assert ratings.shape == (row["num_samples"], 4) and np.all((ratings >= 1) & (ratings <= 5))
            assert row["scores"] == pytest.approx(ratings.mean(axis=1).tolist())  # the mean of the aspects
            assert all(r.startswith("instruction_following: ") and "\nhelpfulness: " in r for r in row["rationales"])


def test_the_policy_learns_the_judges_rule(llm_run):
    rates = pq.read_table(llm_run / "iter-002/evaluate/eval.parquet").column("win_rate").to_pylist()
    lower = bootstrap_interval(rates, resamples=2000, seed=0)[0]
    print(f"LLM judge: final win rate under the rule {np.mean(rates):.3f} over {len(rates)} eval prompts, "
          f"lower bound {lower:.3f}")
    assert len(rates) == 56 and lower > 0.5


def test_a_judge_that_cannot_read_its_questions_fails_the_stage_in_one_line(tmp_path, tiny_policy):
    run_dir = tmp_path / "run"
    result = cli("run", "recipes/ultrafeedback-cpu.yaml", "--run-dir", str(run_dir), "iterations=1",
                 "prompts.per_iteration=4", "prompts.eval_size=4", "tracking.wandb=false",
                 "annotate.max_model_len=64", "annotate.max_tokens=8")
    assert result.returncode == 2, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("selfplay: error:")]
    assert len(error) == 1 and "Traceback" not in result.stderr.split("selfplay: error:")[-1]
    assert "judge answers (100.0%) stayed unusable" in error[0] and "longer than the judge's context" in error[0]
    assert "annotate.max_missing_fraction=0.05" in error[0]
    assert not (run_dir / "iter-001/annotate/manifest.json").exists()  # nothing committed for the stage
