"""The bootstrap interval of a mean over prompts: exact on degenerate data, and covering the true
mean at about the nominal rate on simulated per-prompt win rates."""

import numpy as np
import pytest

from selfplay.evaluate.bootstrap import bootstrap_interval


def test_constant_values_give_a_point_interval():
    assert bootstrap_interval([0.75] * 10) == (0.75, 0.75)


def test_same_values_same_interval_and_it_brackets_the_mean():
    values = [0.0, 0.25, 0.5, 1.0, 1.0, 0.75]
    low, high = bootstrap_interval(values)
    assert (low, high) == bootstrap_interval(values)          # fixed seed
    assert low < np.mean(values) < high and 0.0 <= low and high <= 1.0


def test_two_point_data_by_hand():
    # half 0, half 1 over 400 values: the mean of a resample is ~ N(0.5, 0.025^2), so the 95%
    # interval is 0.5 -+ 1.96 * 0.025 = (0.451, 0.549), up to bootstrap noise
    low, high = bootstrap_interval([0.0, 1.0] * 200, resamples=4000)
    assert low == pytest.approx(0.451, abs=0.006) and high == pytest.approx(0.549, abs=0.006)


def test_coverage_is_about_nominal_on_simulated_win_rates():
    """Per-prompt win rates of 16 comparisons each, prompts of varied difficulty (a Beta
    distribution), 56 prompts as in the e2e runs: over 400 simulated evaluations the 95%
    interval must cover the true mean rate about 95% of the time (binomial sd 1.1%)."""
    rng = np.random.default_rng(1)
    alpha, beta = 3.0, 2.0
    true_rate = alpha / (alpha + beta)
    covered = 0
    for _ in range(400):
        difficulty = rng.beta(alpha, beta, size=56)
        rates = rng.binomial(16, difficulty) / 16
        low, high = bootstrap_interval(rates, seed=int(rng.integers(1 << 30)))
        covered += low <= true_rate <= high
    assert 0.91 <= covered / 400 <= 0.99, covered / 400


def test_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([0.5], confidence=1.5)
