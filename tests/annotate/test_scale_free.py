"""Scale-free scalar judges: the auto temperature, its invariance, comparison wins and the
no-signal warning, on hand-checked numbers.

Stage of two prompts, scores [1, 3] and [0, 2, 4]:
  deviations (-1, 1) and (-2, 0, 2): squares 2 + 8 = 10, degrees of freedom 1 + 2 = 3,
  spread = sqrt(10 / 3) = 1.8257418583505538.
  P[1, 0] of the first prompt = sigmoid(2 / 1.8257418583505538) = sigmoid(1.0954451150103321)
  = 0.749405684861151 (math.exp).
"""

import math

import numpy as np
import pyarrow as pa
import pytest

from selfplay.annotate.stage import judgments_table
from selfplay.judging import win_matrix as wm
from selfplay.judging.base import Judge, Judgment
from selfplay.judging.calls import judge_groups, signal_report
from selfplay.methods import PAIR_RULES
from selfplay.pairs.stage import build_pairs

SPREAD = math.sqrt(10 / 3)


def test_score_spread_pools_within_prompt_deviations():
    assert wm.score_spread([[1.0, 3.0], [0.0, 2.0, 4.0]]) == pytest.approx(SPREAD, abs=1e-15)
    # each prompt's offset is removed: shifting one prompt by 100 changes nothing
    assert wm.score_spread([[101.0, 103.0], [0.0, 2.0, 4.0]]) == pytest.approx(SPREAD, abs=1e-13)
    # NaN (an empty response) and single-score prompts add nothing
    assert wm.score_spread([[1.0, np.nan, 3.0], [0.0, 2.0, 4.0], [7.0]]) == pytest.approx(SPREAD, abs=1e-15)
    assert wm.score_spread([[2.0, 2.0], [5.0, 5.0, 5.0]]) == 0.0 and wm.score_spread([]) == 0.0


def test_score_spread_near_the_float_limit():
    """Issue 19 finding 5. Scores [-1e307, -3e307] and [-1e307, -2e307, -3e307]: deviations
    (1e307, -1e307) and (1e307, 0, -1e307), squares 4e614 over 3 degrees of freedom,
    spread = sqrt(4 / 3) * 1e307 = 1.1547005383792515e307 (a plain sum of squares is inf)."""
    groups = [[-1e307, -3e307], [-1e307, -2e307, -3e307]]
    assert wm.score_spread(groups) == pytest.approx(math.sqrt(4 / 3) * 1e307, rel=1e-15)
    assert wm.resolve_temperature("auto", groups) == pytest.approx(math.sqrt(4 / 3) * 1e307, rel=1e-15)
    # the scaling is by a power of two, so ordinary scores give the plain formula's exact value
    assert wm.score_spread([[1.0, 3.0], [0.0, 2.0, 4.0]]) == SPREAD
    assert wm.score_spread([[1e-300, 3e-300], [0.0, 2e-300, 4e-300]]) == pytest.approx(SPREAD * 1e-300, rel=1e-15)
    # a spread beyond the float range: an error naming the scores' range, not an infinite temperature
    assert wm.score_spread([[1.7e308, -1.7e308]]) == math.inf
    with pytest.raises(ValueError, match=r"scores range from -1\.7e\+308 to 1\.7e\+308"):
        wm.resolve_temperature("auto", [[1.7e308, np.nan, -1.7e308]])


def test_a_judge_near_the_float_limit_keeps_its_signal():
    """Issue 19 finding 5 through the annotate stage: scores of a scoring function around -1e307
    that differ give the same win matrices as the same scores divided by 1e307."""
    groups = [(0, "p", ["a", "b"]), (1, "q", ["b", "c", "a"])]
    huge = {"a": -1e307, "b": -3e307, "c": -2e307}
    small = {name: score / 1e307 for name, score in huge.items()}
    table, metrics, warnings = judgments_table(groups, judge_groups(FixedScores(huge), groups), "aggregated", "auto")
    expected, _, _ = judgments_table(groups, judge_groups(FixedScores(small), groups), "aggregated", "auto")
    assert math.isfinite(metrics["temperature"]) and metrics["no_signal_fraction"] == 0.0 and not warnings
    np.testing.assert_allclose(np.concatenate(table.column("win_matrix").to_pylist()),
                               np.concatenate(expected.column("win_matrix").to_pylist()), rtol=1e-12)


def test_resolve_temperature():
    assert wm.resolve_temperature("auto", [[1.0, 3.0], [0.0, 2.0, 4.0]]) == pytest.approx(SPREAD)
    assert wm.resolve_temperature(0.02, [[1.0, 3.0]]) == 0.02             # a fixed one is kept
    assert wm.resolve_temperature("auto", [[2.0, 2.0], [1.0, 1.0]]) == 1.0  # all ties: no scale, no signal


def test_auto_temperature_win_matrix_by_hand():
    judgment = Judgment(scores=np.array([1.0, 3.0]))
    p = judgment.win_matrix(temperature=wm.resolve_temperature("auto", [[1.0, 3.0], [0.0, 2.0, 4.0]]))
    assert p[1, 0] == pytest.approx(0.749405684861151, abs=1e-12) and p[0, 1] == pytest.approx(1 - 0.749405684861151)


def test_empty_responses_sit_a_fixed_number_of_temperatures_below():
    np.testing.assert_allclose(wm.fill_empty_scores(np.array([2.0, np.nan, 5.0]), 0.5), [2.0, 2.0 - 25.0, 5.0])
    np.testing.assert_array_equal(wm.fill_empty_scores(np.array([np.nan, np.nan]), 3.0), [0.0, 0.0])


class FixedScores(Judge):
    """Returns scores from a table, scaled and shifted: the same judge on another scale."""

    def __init__(self, table, scale=1.0, offset=0.0):
        self.table, self.scale, self.offset = table, scale, offset

    def judge(self, prompts, responses):
        return [Judgment(scores=np.array([self.table[r] for r in group]) * self.scale + self.offset)
                for group in responses]


RESPONSES = {"a": 0.03, "bb": 0.11, "ccc": 0.07, "d": 0.05, "ee": 0.05, "fff": 0.21, "g": 0.0, "hh": 0.013}
GROUPS = [(0, "p0", ["a", "bb", "ccc", ""]), (1, "p1", ["d", "ee", "fff", "g"]), (2, "p2", ["hh", "a", "g", "bb"])]


def _samples(groups):
    rows = []
    for prompt_id, prompt, texts in groups:
        for index, text in enumerate(texts):
            rows.append({"prompt_id": prompt_id, "prompt": prompt, "sample_idx": index, "text": text,
                         "prompt_token_ids": [1, 2], "token_ids": [ord(c) for c in text]})
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("scale, offset", [(0.001, 0.0), (1000.0, 0.0), (1.0, 1e4), (1000.0, -7.0)])
def test_scale_and_offset_give_the_same_win_matrices_and_pairs(scale, offset):
    reference, _, _ = judgments_table(GROUPS, judge_groups(FixedScores(RESPONSES), GROUPS), "aggregated", "auto")
    scaled, metrics, _ = judgments_table(GROUPS, judge_groups(FixedScores(RESPONSES, scale, offset), GROUPS),
                                         "aggregated", "auto")
    assert metrics["temperature"] == pytest.approx(scale * reference.column("temperature")[0].as_py())
    for before, after in zip(reference.to_pylist(), scaled.to_pylist()):
        np.testing.assert_allclose(after["win_matrix"], before["win_matrix"], rtol=0, atol=1e-9)
    for builder in ("sppo", "best_worst", "curriculum"):
        pairs = [build_pairs(_samples(GROUPS), table, PAIR_RULES[builder]).to_pylist() for table in (reference, scaled)]
        assert [(p["prompt_id"], p["chosen"], p["rejected"]) for p in pairs[0]] == \
               [(p["prompt_id"], p["chosen"], p["rejected"]) for p in pairs[1]]
        np.testing.assert_allclose([p["chosen_win_rate"] for p in pairs[1]], [p["chosen_win_rate"] for p in pairs[0]],
                                   atol=1e-9)
    # with a fixed temperature the scale leaks into P: the reason "auto" is the default
    fixed = [judgments_table(GROUPS, judge_groups(FixedScores(RESPONSES, s), GROUPS), "aggregated", 1.0)[0]
             for s in (1.0, 1000.0)]
    assert not np.allclose(fixed[0].column("win_matrix")[1].as_py(), fixed[1].column("win_matrix")[1].as_py())


def test_comparison_wins_count_ties_half():
    np.testing.assert_array_equal(wm.comparison_wins(scores=np.array([1.0, 3.0, 1.0])),
                                  [[0.5, 0.0, 0.5], [1.0, 0.5, 1.0], [0.5, 0.0, 0.5]])
    # pairwise: i beats j when L[i, j] > L[j, i]; L[0, 1] = 2 > L[1, 0] = 0.5, L[0, 2] = L[2, 0] = 1
    logits = np.array([[0.0, 2.0, 1.0], [0.5, 0.0, -1.0], [1.0, 3.0, 0.0]])
    np.testing.assert_array_equal(wm.comparison_wins(pairwise_logits=logits),
                                  [[0.5, 1.0, 0.5], [0.0, 0.5, 0.0], [0.5, 1.0, 0.5]])
    # an increasing transform (exp, cube) of scalar scores changes no verdict
    scores = np.array([0.2, -1.0, 3.5, 0.2])
    for transform in (np.exp, lambda s: s ** 3, lambda s: 1000 * s - 4):
        np.testing.assert_array_equal(wm.comparison_wins(scores=transform(scores)), wm.comparison_wins(scores=scores))


def test_has_no_signal():
    assert wm.has_no_signal(wm.bradley_terry(np.array([0.0, 0.01, 0.02]), 1.0))        # Phat 0.4950..0.5050
    assert not wm.has_no_signal(wm.bradley_terry(np.array([0.0, 0.01, 0.02]), 0.01))


def test_a_stage_of_ties_warns_no_signal():
    table = {"a": 1.0, "b": 1.0, "c": 1.0}
    groups = [(0, "p", ["a", "b"]), (1, "q", ["b", "c", "a"])]
    _, metrics, warnings = judgments_table(groups, judge_groups(FixedScores(table), groups), "aggregated", "auto")
    assert metrics["no_signal_fraction"] == 1.0 and metrics["temperature"] == 1.0 and metrics["score_spread"] == 0.0
    assert len(warnings) == 1 and "every comparison of every prompt is a tie" in warnings[0]


def test_a_unit_scale_judge_with_temperature_one_warns_and_auto_does_not():
    """The issue's case: scores in [0, 1] that differ by ~0.01 give Phat ~ 0.5 at temperature 1."""
    groups = [(i, "p", ["a", "hh", "d", "g"]) for i in range(10)]
    table = {"a": 0.03, "hh": 0.013, "d": 0.05, "g": 0.0}
    judgments = judge_groups(FixedScores(table), groups)
    _, fixed, warnings = judgments_table(groups, judgments, "aggregated", 1.0)
    assert fixed["no_signal_fraction"] == 1.0 and "almost no signal" in warnings[0] and "temperature" in warnings[0]
    _, auto, warnings = judgments_table(groups, judgments, "aggregated", "auto")
    assert auto["no_signal_fraction"] == 0.0 and warnings == []


def test_signal_report_counts_prompts():
    flat = Judgment(scores=np.array([1.0, 1.0]))
    sharp = Judgment(scores=np.array([0.0, 5.0]))
    judgments = [flat] * 9 + [sharp]
    fraction, warnings = signal_report(judgments, [j.win_matrix() for j in judgments], "annotate")
    assert fraction == 0.9 and "90% of prompts" in warnings[0]
    fraction, warnings = signal_report(judgments[1:], [j.win_matrix() for j in judgments[1:]], "annotate")
    assert fraction == pytest.approx(8 / 9) and warnings == []
