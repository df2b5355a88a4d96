"""The evaluate stage's numbers on hand-checked cases: the win rate counts comparisons won (ties
half), the mean preference is reported beside it, and a scalar judge's scale does not move the
win rate while a fixed temperature moves the mean preference.

One eval prompt, m = 2 samples per policy, scores new = [3, 1], initial = [1, 0]:
  new 3 beats 1 and 0; new 1 ties 1 and beats 0  ->  (1 + 1 + 0.5 + 1) / 4 = 0.875.
A second prompt, new = [0, 0], initial = [2, 0]: loses, ties, loses, ties -> 0.25.
win_rate_vs_initial = (0.875 + 0.25) / 2 = 0.5625.
"""

import math

import numpy as np
import pyarrow as pa
import pytest

from selfplay.evaluate.stage import judge_against_initial
from selfplay.judging.base import Judge, Judgment


def versus_initial(*args):
    result = judge_against_initial(*args)
    return result.metrics, result.per_prompt, result.warnings

NEW = {0: [3.0, 1.0], 1: [0.0, 0.0]}
INITIAL = {0: [1.0, 0.0], 1: [2.0, 0.0]}


def _samples(scores_by_prompt, tag):
    return pa.Table.from_pylist([{"prompt_id": pid, "prompt": f"prompt {pid}", "sample_idx": k,
                                  "text": f"{tag}:{score}", "prompt_token_ids": [1], "token_ids": [2]}
                                 for pid, scores in scores_by_prompt.items() for k, score in enumerate(scores)])


class ScoreInText(Judge):
    def __init__(self, transform=lambda s: s, pairwise=False):
        self.transform, self.pairwise = transform, pairwise

    def judge(self, prompts, responses):
        out = []
        for group in responses:
            scores = self.transform(np.array([float(r.split(":")[1]) for r in group]))
            out.append(Judgment(pairwise_logits=scores[:, None] - scores[None, :]) if self.pairwise
                       else Judgment(scores=scores))
        return out


def test_win_rate_counts_comparisons_with_ties_half():
    metrics, table, warnings = versus_initial(ScoreInText(), _samples(NEW, "new"), _samples(INITIAL, "init"),
                                                     "aggregated", "auto")
    assert [row["win_rate"] for row in table.to_pylist()] == [0.875, 0.25]
    assert metrics["win_rate_vs_initial"] == 0.5625 and warnings == []
    # the bootstrap resamples the two prompts: means 0.25, 0.5625 or 0.875, the extremes a quarter each
    assert metrics["win_rate_vs_initial_ci_low"] == 0.25 and metrics["win_rate_vs_initial_ci_high"] == 0.875
    # auto temperature: deviations (1.75, -0.25, -0.25, -1.25) and (-0.5, -0.5, 1.5, -0.5): squares 4.75 + 3, dof 6
    temperature = math.sqrt(7.75 / 6)
    assert metrics["judge_temperature"] == pytest.approx(temperature)
    sigmoid = lambda x: 1 / (1 + math.exp(-x / temperature))
    first = (sigmoid(2) + sigmoid(3) + sigmoid(0) + sigmoid(1)) / 4
    second = (sigmoid(-2) + sigmoid(0)) / 2
    assert table.to_pylist()[0]["mean_preference"] == pytest.approx(first)
    assert metrics["mean_preference_vs_initial"] == pytest.approx((first + second) / 2)


@pytest.mark.parametrize("transform", [lambda s: s * 0.001, lambda s: s * 1000 + 5, np.exp, lambda s: s ** 3])
def test_win_rate_is_unchanged_by_increasing_transforms(transform):
    metrics, _, _ = versus_initial(ScoreInText(transform), _samples(NEW, "new"), _samples(INITIAL, "init"),
                                          "aggregated", 1.0)
    assert metrics["win_rate_vs_initial"] == 0.5625


def test_a_fixed_temperature_moves_only_the_mean_preference():
    small, _, _ = versus_initial(ScoreInText(lambda s: s * 0.001), _samples(NEW, "new"),
                                        _samples(INITIAL, "init"), "aggregated", 1.0)
    assert small["win_rate_vs_initial"] == 0.5625 and abs(small["mean_preference_vs_initial"] - 0.5) < 1e-3


def test_pairwise_judges_win_when_the_judge_prefers_the_new_response():
    metrics, table, _ = versus_initial(ScoreInText(pairwise=True), _samples(NEW, "new"),
                                              _samples(INITIAL, "init"), "direct", "auto")
    assert [row["win_rate"] for row in table.to_pylist()] == [0.875, 0.25]
    assert metrics["judge_temperature"] is None
    # direct rule: P = sigmoid(L[i, j]) = sigmoid(s_i - s_j)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    assert table.to_pylist()[0]["mean_preference"] == pytest.approx((sigmoid(2) + sigmoid(3) + 0.5 + sigmoid(1)) / 4)


def test_empty_new_responses_lose_and_the_stage_warns_when_nothing_differs():
    new = pa.Table.from_pylist([{"prompt_id": 0, "prompt": "p", "sample_idx": k, "text": "", "prompt_token_ids": [1],
                                 "token_ids": []} for k in range(2)])
    metrics, _, _ = versus_initial(ScoreInText(), new, _samples({0: [1.0, 0.0]}, "init"), "aggregated", "auto")
    assert metrics["win_rate_vs_initial"] == 0.0
    same = {0: [1.0, 1.0], 1: [2.0, 2.0]}
    metrics, _, warnings = versus_initial(ScoreInText(), _samples(same, "new"), _samples(same, "init"),
                                                 "aggregated", "auto")
    assert metrics["win_rate_vs_initial"] == 0.5 and metrics["no_signal_fraction"] == 1.0
    assert "evaluate: no signal" in warnings[0]
