"""judge_against on hand-checked judgments: per-comparison verdicts in a fixed order, metric
names carrying the opponent, and judge_against_initial as the same numbers under its old names.

One prompt, scores policy = [3, 1], other = [1, 0] (text "tag:score", token lengths 4, 2 | 1, 3):
  (0,0) 3>1 win, (0,1) 3>0 win, (1,0) 1=1 tie, (1,1) 1>0 win  ->  win rate 3.5 / 4 = 0.875.
"""

import numpy as np
import pyarrow as pa
import pytest

from selfplay.evaluate.head_to_head import judge_against
from selfplay.evaluate.stage import judge_against_initial
from selfplay.judging.base import Judge, Judgment


def versus_initial(*args):
    result = judge_against_initial(*args)
    return result.metrics, result.per_prompt, result.warnings


def _samples(scores, lengths, tag):
    return pa.Table.from_pylist([{"prompt_id": 0, "prompt": "p", "sample_idx": k, "text": f"{tag}:{score}",
                                  "prompt_token_ids": [1], "token_ids": [2] * length}
                                 for k, (score, length) in enumerate(zip(scores, lengths))])


class ScoreInText(Judge):
    def judge(self, prompts, responses):
        return [Judgment(scores=np.array([float(r.split(":")[1]) for r in group])) for group in responses]


POLICY, OTHER = _samples([3.0, 1.0], [4, 2], "new"), _samples([1.0, 0.0], [1, 3], "old")


def test_comparisons_are_listed_policy_sample_then_other_sample():
    result = judge_against(ScoreInText(), POLICY, OTHER, "aggregated", "auto", name="vs_previous",
                           opponent="previous")
    rows = result.comparisons.to_pylist()
    assert [(r["policy_sample"], r["other_sample"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r["win"] for r in rows] == [1.0, 1.0, 0.5, 1.0]
    assert [(r["policy_tokens"], r["other_tokens"]) for r in rows] == [(4, 1), (4, 3), (2, 1), (2, 3)]
    assert result.per_prompt.to_pylist()[0]["win_rate"] == 0.875
    assert result.per_prompt.to_pylist()[0]["previous_responses"] == ["old:1.0", "old:0.0"]
    assert result.metrics["win_rate_vs_previous"] == 0.875
    assert set(result.metrics) == {"win_rate_vs_previous", "win_rate_vs_previous_ci_low",
                                   "win_rate_vs_previous_ci_high", "mean_preference_vs_previous",
                                   "judge_temperature_vs_previous", "no_signal_fraction_vs_previous"}


def test_judge_against_initial_is_the_same_numbers_under_its_old_names():
    metrics, table, warnings = versus_initial(ScoreInText(), POLICY, OTHER, "aggregated", "auto")
    general = judge_against(ScoreInText(), POLICY, OTHER, "aggregated", "auto", name="vs_initial")
    assert metrics["judge_temperature"] == general.metrics["judge_temperature_vs_initial"]
    assert metrics["no_signal_fraction"] == general.metrics["no_signal_fraction_vs_initial"]
    assert metrics["win_rate_vs_initial"] == general.metrics["win_rate_vs_initial"] == 0.875
    assert sorted(metrics) == sorted(["win_rate_vs_initial", "win_rate_vs_initial_ci_low",
                                      "win_rate_vs_initial_ci_high", "mean_preference_vs_initial",
                                      "judge_temperature", "no_signal_fraction"])
    assert table.column_names == ["prompt_id", "win_rate", "mean_preference", "policy_responses", "initial_responses"]
    assert warnings == []


def test_a_prompt_missing_from_the_other_policy_is_named():
    other = pa.Table.from_pylist([{**row, "prompt_id": 7} for row in OTHER.to_pylist()])
    with pytest.raises(ValueError, match="prompt_id 0 .*vs_previous"):
        judge_against(ScoreInText(), POLICY, other, "aggregated", "auto", name="vs_previous")


def test_comparison_tables_feed_agreement_and_the_length_controlled_rate():
    """Two judges on the same samples list the same comparisons in the same order, so their win
    columns go straight into judge_agreement; a judge reversed agrees only on the tie."""
    from selfplay.evaluate.agreement import judge_agreement
    from selfplay.evaluate.length_control import length_controlled_win_rate, length_controlled_win_rate_of

    class Reversed(ScoreInText):
        def judge(self, prompts, responses):
            return [Judgment(scores=-j.scores) for j in super().judge(prompts, responses)]

    first = judge_against(ScoreInText(), POLICY, OTHER, "aggregated", "auto")
    second = judge_against(Reversed(), POLICY, OTHER, "aggregated", "auto")
    assert second.comparisons.column("win").to_pylist() == [0.0, 0.0, 0.5, 0.0]
    assert judge_agreement(first.comparisons.column("win"), second.comparisons.column("win")) == 0.25
    assert judge_agreement(first.comparisons.column("win"), first.comparisons.column("win")) == 1.0
    rows = first.comparisons.to_pylist()
    assert length_controlled_win_rate_of(first.comparisons) == length_controlled_win_rate(
        [r["win"] for r in rows], [r["policy_tokens"] for r in rows], [r["other_tokens"] for r in rows])
