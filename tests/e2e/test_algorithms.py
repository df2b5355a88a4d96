"""Iterative DPO, DRIFT, Selfie, TPO and ASFT recipes end to end (real vLLM, DeepSpeed, Ray): each
raises the win rate against the initial policy under the function judge's known preference (3
iterations; the reference-free TPO and ASFT, which learn fastest, 2), as a statistic: the bootstrap
95% lower bound of the final win rate over the eval prompts exceeds 0.5. (SPPO is covered by
test_sppo_run.py, Curry-DPO's tiers by test_curry_tiers.py.)"""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

RECIPES = ["iterative-dpo-cpu", "drift-cpu", "selfie-cpu", "tpo-cpu", "asft-cpu"]
# measured on 24 eval prompts: TPO 0.633, 0.806 (final 95% interval 0.755-0.853); ASFT 0.661, 0.820 (0.762-0.876)
ITERATIONS = {"tpo-cpu": 2, "asft-cpu": 2}
REFERENCE = {"iterative-dpo-cpu": "initial", "tpo-cpu": "none", "asft-cpu": "none"}  # else previous
# DRIFT moves the policy least: 8 eval samples per prompt (64 comparisons a prompt instead of 16)
# narrow its interval; with 4 its lower bound was 0.505, with 8 it is 0.544 (this CPU).
EXTRA = {"drift-cpu": ["evaluate.samples_per_prompt=8"]}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_learns_the_judges_preference(tmp_path, tiny_policy, recipe):
    import pyarrow.parquet as pq

    from selfplay.evaluate.bootstrap import bootstrap_interval

    run_dir, last = tmp_path / recipe, ITERATIONS.get(recipe, 3)
    iterations = range(1, last + 1)
    # 24 eval prompts: all that 3 x 32 training prompts leave of the 120 in each prompt file
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "run", f"recipes/{recipe}.yaml",
                             "--run-dir", str(run_dir), "tracking.wandb=false", "prompts.eval_size=24",
                             f"iterations={last}", *EXTRA.get(recipe, [])],
                            capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    win_rates = [json.loads((run_dir / f"iter-{t:03d}/evaluate/metrics.json").read_text())["win_rate_vs_initial"]
                 for t in iterations]
    final = pq.read_table(run_dir / f"iter-{last:03d}/evaluate/eval.parquet").column("win_rate").to_pylist()
    lower, upper = bootstrap_interval(final, resamples=2000, seed=0)
    print(recipe, win_rates, f"final 95% interval over {len(final)} prompts: ({lower:.3f}, {upper:.3f})")
    assert lower > 0.5, (win_rates, lower)
    trains = [json.loads((run_dir / f"iter-{t:03d}/train/manifest.json").read_text()) for t in iterations]
    expected_reference = REFERENCE.get(recipe, "previous")
    assert all(t["reference"]["rule"] == expected_reference for t in trains)
    if expected_reference == "none":  # reference-free: no reference was read, loaded or scored
        assert all("reference" not in t["inputs"] and t["metrics"]["reference_seconds"] == 0 for t in trains)
        assert all(t["ranks"]["reference_from"] == "none" for t in trains)
    elif recipe == "iterative-dpo-cpu":  # the reference really is pi_0 in every iteration
        assert len({t["reference"]["digest"] for t in trains}) == 1
    else:  # pi_t: the policy the iteration started from
        assert trains[1]["reference"]["digest"] == trains[0]["outputs"]["policy"]
    if recipe in ("drift-cpu", "selfie-cpu"):
        seed = json.loads((run_dir / "iter-000/seed/manifest.json").read_text())
        assert trains[0]["inputs"]["policy"] == seed["outputs"]["policy"]   # iteration 1 starts from the seed stage
    if recipe == "tpo-cpu":  # gold = best, chosen = second best, rejected = worst of the 4 samples
        pairs = pq.read_table(run_dir / "iter-001/pairs/pairs.parquet").to_pylist()
        assert pairs and all(p["gold_score"] >= p["chosen_score"] > p["rejected_score"] for p in pairs)
        assert all(len({p["gold_idx"], p["chosen_idx"], p["rejected_idx"]}) == 3 and p["gold_token_ids"] for p in pairs)
    if recipe == "drift-cpu":
        pairs = pq.read_table(run_dir / "iter-001/pairs/pairs.parquet").to_pylist()
        records = [json.loads(line) for line in (REPO / "recipes/data/drift_dsat.jsonl").read_text().splitlines()]
        assert len(pairs) == 32 and all(p["rejected"] == records[p["prompt_id"]]["dsat_response"] for p in pairs)
    if recipe == "selfie-cpu":  # the judge scored the sampled token ids, not a re-tokenization of the text
        import numpy as np

        from selfplay.artifacts import group_by_prompt
        from selfplay.judging.selfie import SelfieJudge

        grouped = group_by_prompt(pq.read_table(run_dir / "iter-002/generate/samples.parquet"))[:4]
        judge = SelfieJudge(str(run_dir / "iter-001/train/policy"), str(tiny_policy))
        expected = judge.judge([prompt for _, prompt, _ in grouped], [[r["text"] for r in rows] for _, _, rows in grouped],
                               token_ids=[(rows[0]["prompt_token_ids"], [r["token_ids"] for r in rows])
                                          for _, _, rows in grouped])
        stored = pq.read_table(run_dir / "iter-002/annotate/judgments.parquet").to_pylist()[:4]
        for row, judgment in zip(stored, expected):
            np.testing.assert_allclose(row["scores"], judgment.scores, atol=1e-4)
