"""One judge's verdicts on the policy's eval samples against another policy's (initial or previous).

For each eval prompt the judge sees the policy's m samples and the other policy's m' samples
together (one group of m + m', as annotate does), and every (policy_i, other_j) pair is one
comparison:
- `win`: 1 if the judge prefers policy_i, 0.5 on an exact tie, else 0
  (win_matrix.comparison_wins: raw scores compared, or L[i, j] vs L[j, i]); for a scalar judge
  it does not depend on the temperature or on any increasing transform of the scores;
- the prompt's `win_rate` is the mean of its m x m' wins, its `mean_preference` the mean of the
  preference probabilities P[policy_i, other_j] (Bradley-Terry at the stage's temperature, or
  the win-matrix rule of a pairwise judge).

Metric names carry `name` (say "vs_initial", "vs_previous"), so one evaluate stage can report
several opponents and judges side by side: `win_rate_<name>` (the mean over prompts) with its
95% bootstrap interval over prompts (`_ci_low` / `_ci_high`, bootstrap.py),
`mean_preference_<name>`, `judge_temperature_<name>`, `no_signal_fraction_<name>`.

The per-comparison table (prompt order of the policy samples, then i, then j) feeds the
length-controlled win rate (length_control.py) and the agreement of two judges on the same
comparisons (agreement.py): two judges over the same samples give rows in the same order.
"""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from selfplay.artifacts import group_by_prompt
from selfplay.evaluate.bootstrap import bootstrap_interval
from selfplay.judging.calls import answer_counts, judge_groups, signal_report, stage_temperature


@dataclass
class HeadToHead:
    metrics: dict            # the names above
    per_prompt: pa.Table     # prompt_id, win_rate, mean_preference, policy_responses, <opponent>_responses
    comparisons: pa.Table    # prompt_id, policy_sample, other_sample, win, policy_tokens, other_tokens
    warnings: list[str]


def judge_against(judge, policy_samples: pa.Table, other_samples: pa.Table, rule: str, temperature,
                  name: str = "vs_initial", opponent: str = "other", desc: str = "evaluate") -> HeadToHead:
    """The policy's samples against `other_samples` on the policy's prompts, judged by `judge`.

    rule: the win-matrix rule of a pairwise judge; temperature: "auto" or a float, as
    annotate.temperature. `opponent` names the per-prompt column of the other policy's
    responses (`<opponent>_responses`); `desc` labels the progress bar and the warnings.
    """
    others = {pid: rows for pid, _, rows in group_by_prompt(other_samples)}
    groups, sizes, token_ids, lengths = [], [], [], []
    for prompt_id, prompt, rows in group_by_prompt(policy_samples):
        if prompt_id not in others:
            raise ValueError(f"{desc}: prompt_id {prompt_id} has policy samples but none from the policy "
                             f"it is compared with ({name})")
        both = rows + others[prompt_id]
        groups.append((prompt_id, prompt, [r["text"] for r in both]))
        token_ids.append((rows[0]["prompt_token_ids"], [r["token_ids"] for r in both]))
        lengths.append([len(r["token_ids"]) for r in both])
        sizes.append(len(rows))
    judgments = judge_groups(judge, groups, desc=desc, token_ids=token_ids)
    resolved = stage_temperature(temperature, judgments)
    per_prompt, comparisons, matrices = [], [], []
    for (prompt_id, _, responses), m, judgment, group_lengths in zip(groups, sizes, judgments, lengths):
        matrix = judgment.win_matrix(rule, resolved or 1.0)
        matrices.append(matrix)
        wins = judgment.wins()[:m, m:]
        per_prompt.append({"prompt_id": prompt_id, "win_rate": float(wins.mean()),
                           "mean_preference": float(matrix[:m, m:].mean()),
                           "policy_responses": responses[:m], f"{opponent}_responses": responses[m:]})
        if any(j.rationales is not None for j in judgments):  # an LLM judge: on the policy's first sample
            per_prompt[-1]["rationale"] = (judgment.rationales or [None])[0]
        for i in range(m):
            for j in range(wins.shape[1]):
                comparisons.append({"prompt_id": prompt_id, "policy_sample": i, "other_sample": j,
                                    "win": float(wins[i, j]), "policy_tokens": group_lengths[i],
                                    "other_tokens": group_lengths[m + j]})
    no_signal, warnings = signal_report(judgments, matrices, desc)
    win_rates = [p["win_rate"] for p in per_prompt]
    low, high = bootstrap_interval(win_rates)
    metrics = {f"win_rate_{name}": float(np.mean(win_rates)),
               f"win_rate_{name}_ci_low": low, f"win_rate_{name}_ci_high": high,
               f"mean_preference_{name}": float(np.mean([p["mean_preference"] for p in per_prompt])),
               f"judge_temperature_{name}": resolved, f"no_signal_fraction_{name}": no_signal,
               **{f"{key}_{name}": value for key, value in answer_counts(judgments).items()}}
    return HeadToHead(metrics, pa.Table.from_pylist(per_prompt), pa.Table.from_pylist(comparisons), warnings)
