"""judge_agreement by hand: same verdicts agree, opposite ones do not, a tie against a verdict
is half agreement."""

import pytest

from selfplay.evaluate.agreement import judge_agreement


def test_agreement_by_hand():
    # agree, agree, disagree, tie vs win (0.5), tie vs tie (1)  ->  3.5 / 5
    assert judge_agreement([1, 0, 1, 0.5, 0.5], [1, 0, 0, 1, 0.5]) == pytest.approx(0.7)
    assert judge_agreement([1, 0, 1], [0, 1, 0]) == 0.0
    assert judge_agreement([1, 0], [1, 0]) == 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="equally long"):
        judge_agreement([1, 0], [1])
    with pytest.raises(ValueError, match="equally long"):
        judge_agreement([], [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        judge_agreement([2.0], [1.0])
