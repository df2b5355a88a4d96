"""The evaluate stage: the new policy against the initial one on held-out prompts.

Both policies sample `evaluate.samples_per_prompt` responses per eval prompt (the initial
policy's once per run, in iter-000/baseline); the run's judge sees all 2m responses of a
prompt together. For each prompt, over the m x m (new_i, initial_j) comparisons:
- `win_rate`: the fraction the judge decides for the new response, ties counting half
  (win_matrix.comparison_wins: raw scores compared, or L[i, j] vs L[j, i]); for a scalar
  judge it does not depend on the temperature or on any increasing transform of the scores;
- `mean_preference`: the mean preference probability P[new_i, initial_j] (Bradley-Terry at
  the stage's temperature, or the win-matrix rule of a pairwise judge).
`win_rate_vs_initial` and `mean_preference_vs_initial` are their means over prompts, with the
win rate's 95% bootstrap interval over prompts (`win_rate_vs_initial_ci_low` / `_ci_high`,
bootstrap.py); eval.parquet keeps the per-prompt values.
"""

import numpy as np
import pyarrow as pa

from selfplay.annotate.stage import judge_groups, signal_report, stage_temperature
from selfplay.evaluate.bootstrap import bootstrap_interval
from selfplay.generate.stage import group_by_prompt


def response_stats(samples: pa.Table) -> dict:
    rows = samples.to_pylist()
    lengths = [len(r["token_ids"]) for r in rows]
    return {"mean_response_tokens": float(np.mean(lengths)),
            "finished_fraction": float(np.mean([r["finish_reason"] == "stop" for r in rows])),
            "distinct_responses": len({r["text"] for r in rows}) / max(1, len(rows))}


def judge_against_initial(judge, policy_samples: pa.Table, initial_samples: pa.Table, rule: str,
                          temperature) -> tuple[dict, pa.Table, list[str]]:
    """(metrics, eval.parquet, warnings); `temperature` is "auto" or a float, as annotate.temperature."""
    initial = {pid: rows for pid, _, rows in group_by_prompt(initial_samples)}
    groups, sizes, token_ids = [], [], []
    for prompt_id, prompt, rows in group_by_prompt(policy_samples):
        both = rows + initial[prompt_id]
        groups.append((prompt_id, prompt, [r["text"] for r in both]))
        token_ids.append((rows[0]["prompt_token_ids"], [r["token_ids"] for r in both]))
        sizes.append(len(rows))
    judgments = judge_groups(judge, groups, desc="evaluate", token_ids=token_ids)
    resolved = stage_temperature(temperature, judgments)
    per_prompt, matrices = [], []
    for (prompt_id, _, responses), m, judgment in zip(groups, sizes, judgments):
        matrix = judgment.win_matrix(rule, resolved or 1.0)
        matrices.append(matrix)
        per_prompt.append({"prompt_id": prompt_id, "win_rate": float(judgment.wins()[:m, m:].mean()),
                           "mean_preference": float(matrix[:m, m:].mean()),
                           "policy_responses": responses[:m], "initial_responses": responses[m:]})
    no_signal, warnings = signal_report(judgments, matrices, "evaluate")
    win_rates = [p["win_rate"] for p in per_prompt]
    low, high = bootstrap_interval(win_rates)
    metrics = {"win_rate_vs_initial": float(np.mean(win_rates)),
               "win_rate_vs_initial_ci_low": low, "win_rate_vs_initial_ci_high": high,
               "mean_preference_vs_initial": float(np.mean([p["mean_preference"] for p in per_prompt])),
               "judge_temperature": resolved, "no_signal_fraction": no_signal}
    return metrics, pa.Table.from_pylist(per_prompt), warnings
