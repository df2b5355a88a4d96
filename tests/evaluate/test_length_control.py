"""The length-controlled win rate on constructed judgments with known answers.

Lengths: per prompt, 4 policy and 4 other samples, all 16 pairs compared; the policy's answers
are 30 tokens longer on average (sd 15 each), so the lengths overlap (about 8% of pairs have
the other answer longer).
"""

import numpy as np
import pytest

from selfplay.evaluate.length_control import (
    INTERCEPT_PRIOR_SD,
    SLOPE_PRIOR_SD,
    fit_fractional_logistic,
    length_controlled_win_rate,
    length_covariate,
)


def _lengths(rng, prompts, m=4, gap=30.0):
    policy = rng.normal(60 + gap, 15, size=(prompts, m)).round().clip(1)
    other = rng.normal(60, 15, size=(prompts, m)).round().clip(1)
    return np.repeat(policy, m, axis=1).ravel(), np.tile(other, (1, m)).ravel()


def test_a_judge_that_always_prefers_the_longer_answer_is_worth_half():
    policy, other = _lengths(np.random.default_rng(0), 60)
    wins = (policy > other) + 0.5 * (policy == other)
    assert wins.mean() > 0.88 and (policy < other).any()
    assert length_controlled_win_rate(wins, policy, other) == pytest.approx(0.5, abs=0.06)


def test_a_judge_with_a_true_preference_independent_of_length_keeps_it():
    rng = np.random.default_rng(1)
    policy, other = _lengths(rng, 200)
    wins = (rng.random(len(policy)) < 0.7).astype(float)
    assert length_controlled_win_rate(wins, policy, other) == pytest.approx(0.7, abs=0.05)


def test_a_length_biased_judge_over_a_true_preference_is_corrected():
    """P(win) = sigmoid(logit(0.7) + 2 x): the raw rate is inflated by length, LC recovers 0.7."""
    rng = np.random.default_rng(2)
    policy, other = _lengths(rng, 200, gap=15.0)
    x = length_covariate(policy, other)
    wins = (rng.random(len(policy)) < 1 / (1 + np.exp(-(np.log(0.7 / 0.3) + 2 * x)))).astype(float)
    assert wins.mean() > 0.75  # 0.7 plus what length adds (binomial sd 0.008)
    assert length_controlled_win_rate(wins, policy, other) == pytest.approx(0.7, abs=0.05)


def test_equal_lengths_give_the_raw_rate():
    wins = np.array([1, 1, 0.5, 0, 1, 1, 0, 1.0])
    assert length_controlled_win_rate(wins, [5] * 8, [5] * 8) == pytest.approx(wins.mean(), abs=1e-3)


def test_the_fit_is_the_penalised_maximum_and_ties_are_half():
    """At the answer the gradient of the penalised log-likelihood vanishes; ties as 0.5 targets
    everywhere give a = b = 0; weight 2 is the row listed twice."""
    rng = np.random.default_rng(3)
    x, y = rng.uniform(-1, 1, 50), rng.choice([0.0, 0.5, 1.0], 50)
    a, b = fit_fractional_logistic(x, y)
    p = 1 / (1 + np.exp(-(a + b * x)))
    assert np.sum(y - p) == pytest.approx(a / INTERCEPT_PRIOR_SD ** 2, abs=1e-8)
    assert np.sum((y - p) * x) == pytest.approx(b / SLOPE_PRIOR_SD ** 2, abs=1e-8)
    assert fit_fractional_logistic(x, np.full(50, 0.5)) == pytest.approx((0.0, 0.0), abs=1e-12)
    weights = np.where(np.arange(50) < 10, 2.0, 1.0)
    doubled = fit_fractional_logistic(np.concatenate([x, x[:10]]), np.concatenate([y, y[:10]]))
    assert fit_fractional_logistic(x, y, weights) == pytest.approx(doubled, abs=1e-9)


def test_every_verdict_a_win_stays_finite():
    # the intercept prior stops the logit near 6 here (20 wins, prior sd 10): close to 1, not 1
    assert 0.99 < length_controlled_win_rate([1.0] * 20, np.arange(20), np.arange(20)[::-1]) < 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="equally long"):
        fit_fractional_logistic([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_fractional_logistic([0.0], [2.0])
