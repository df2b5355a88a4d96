"""The evaluate stage: the new policy against the initial one on held-out prompts.

Both policies sample `evaluate.samples_per_prompt` responses per eval prompt (the initial
policy's once per run, in iter-000/baseline); the run's judge sees all 2m responses of a
prompt together, and the win rate of the prompt is the mean of P[new_i, initial_j] over the
m x m block. `win_rate_vs_initial` is the mean over prompts, a fraction in [0, 1].
"""

import numpy as np
import pyarrow as pa

from selfplay.annotate.stage import judge_groups
from selfplay.generate.stage import group_by_prompt


def response_stats(samples: pa.Table) -> dict:
    rows = samples.to_pylist()
    lengths = [len(r["token_ids"]) for r in rows]
    return {"mean_response_tokens": float(np.mean(lengths)),
            "finished_fraction": float(np.mean([r["finish_reason"] == "stop" for r in rows])),
            "distinct_responses": len({r["text"] for r in rows}) / max(1, len(rows))}


def win_rate_vs_initial(judge, policy_samples: pa.Table, initial_samples: pa.Table, rule: str,
                        temperature: float) -> tuple[float, pa.Table]:
    initial = {pid: rows for pid, _, rows in group_by_prompt(initial_samples)}
    groups, sizes, token_ids = [], [], []
    for prompt_id, prompt, rows in group_by_prompt(policy_samples):
        both = rows + initial[prompt_id]
        groups.append((prompt_id, prompt, [r["text"] for r in both]))
        token_ids.append((rows[0]["prompt_token_ids"], [r["token_ids"] for r in both]))
        sizes.append(len(rows))
    judgments = judge_groups(judge, groups, desc="evaluate", token_ids=token_ids)
    per_prompt = []
    for (prompt_id, _, responses), m, judgment in zip(groups, sizes, judgments):
        matrix = judgment.win_matrix(rule, temperature)
        per_prompt.append({"prompt_id": prompt_id, "win_rate": float(matrix[:m, m:].mean()),
                           "policy_responses": responses[:m], "initial_responses": responses[m:]})
    return float(np.mean([p["win_rate"] for p in per_prompt])), pa.Table.from_pylist(per_prompt)
