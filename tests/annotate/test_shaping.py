"""PAR and its kin (selfplay/annotate/shaping.py) on hand-checked values: bounded, unchanged by
an offset of the judge, monotone in the raw score; the length penalty; empty responses."""

import math

import numpy as np
import pytest

from selfplay.annotate.shaping import Q85_STANDARD_NORMAL, length_penalized, shape
from selfplay.annotate.stage import shape_judgments
from selfplay.judging.base import Judgment
from selfplay.judging.registry import ShapingConfig


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_par_is_the_mean_win_probability_against_the_references():
    shaped = shape("par", [2.0, 0.0], [1.0, 3.0])
    assert shaped == pytest.approx([(sigmoid(1) + sigmoid(-1)) / 2, (sigmoid(-1) + sigmoid(-3)) / 2])
    assert shape("par", [2.0], [1.0], k=3.0) == pytest.approx([sigmoid(3.0)])
    assert shape("par", [5.0], [5.0]) == pytest.approx([0.5])  # as good as the reference: a coin flip


def test_centered_and_lsc():
    assert shape("centered", [2.0, 0.0], [1.0, 3.0]) == pytest.approx([0.0, -2.0])
    references = np.array([1.0, 3.0])  # normal fit: mean 2, std 1 -> q85 = 2 + 1.0364
    q85 = 2.0 + Q85_STANDARD_NORMAL
    assert shape("lsc", [4.0], references) == pytest.approx([math.log(sigmoid(4.0 - q85))])
    assert Q85_STANDARD_NORMAL == pytest.approx(1.0364333894937898)


@pytest.mark.parametrize("kind", ["par", "centered", "lsc"])
def test_an_offset_of_the_judge_changes_nothing(kind):
    rng = np.random.default_rng(0)
    scores, references = rng.normal(size=5), rng.normal(size=3)
    assert shape(kind, scores + 1e3, references + 1e3) == pytest.approx(shape(kind, scores, references))


@pytest.mark.parametrize("kind", ["par", "centered", "lsc"])
def test_monotone_in_the_raw_score(kind):
    scores = np.linspace(-10, 10, 101)
    assert np.all(np.diff(shape(kind, scores, [0.0, 1.0, -2.0])) > 0)
    far = np.linspace(-1e4, 1e4, 101)  # PAR saturates in floats there: never decreasing
    assert np.all(np.diff(shape(kind, far, [0.0, 1.0, -2.0])) >= 0)


def test_par_is_bounded_however_far_the_reward_is_inflated():
    shaped = shape("par", [1e6, -1e6, 0.0], [0.0, 1.0])
    assert np.all((shaped >= 0) & (shaped <= 1)) and np.all(np.isfinite(shaped))
    assert shaped[0] == pytest.approx(1.0) and shaped[1] == pytest.approx(0.0)
    # an inflated reward gains nothing past the references: 10 and 1e6 both win surely
    assert shape("par", [10.0 * 4], [0.0])[0] == pytest.approx(shape("par", [1e6], [0.0])[0], abs=1e-12)


def test_length_penalty_only_beyond_its_free_tokens():
    assert length_penalized([1.0, 1.0, 1.0], [10, 300, 350], 0.01, 300) == pytest.approx([1.0, 1.0, 0.5])
    assert length_penalized([1.0], [1000], 0.0, 300) == pytest.approx([1.0])


def test_empty_responses_stay_empty_and_empty_references_count_as_the_worst():
    shaped = shape("par", [np.nan, 1.0], [0.0, np.nan])
    assert np.isnan(shaped[0])
    # the empty reference takes the prompt's lowest finite score (0.0): 1.0 beats both by 1
    assert shaped[1] == pytest.approx(sigmoid(1.0))
    assert np.isnan(shape("par", [np.nan, np.nan], [np.nan])).all()
    with pytest.raises(ValueError, match="at least one reference"):
        shape("par", [1.0], [])


def test_shape_judgments_keeps_the_raw_scores_and_applies_the_length_penalty_first():
    config = ShapingConfig(type="par", k=2.0, length_penalty=0.5, length_penalty_after=2)
    judgments = [Judgment(scores=np.array([3.0, 1.0]))]
    reference = [Judgment(scores=np.array([1.0]))]
    shaped, raw = shape_judgments(judgments, [[4, 2]], reference, [[2]], config)
    # 3.0 over 4 tokens: penalty 0.5 x 2 -> 2.0; then sigmoid(2 x (2.0 - 1.0))
    assert shaped[0].scores == pytest.approx([sigmoid(2.0), sigmoid(0.0)])
    assert raw.raw[0].tolist() == [3.0, 1.0] and raw.reference[0].tolist() == [1.0]
    metrics = raw.metrics(shaped)
    assert metrics["mean_raw_score"] == pytest.approx(2.0) and metrics["reference_responses"] == 1
    assert metrics["mean_shaped_score"] == pytest.approx((sigmoid(2.0) + 0.5) / 2)
