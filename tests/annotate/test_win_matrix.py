"""Win matrices from judge output, against hand-computed numbers.

L3 (pairwise logits, L[i, j] = logit that i beats j; the diagonal 9s must be ignored):
    [[9,  2,  1],
     [0,  9, -1],
     [3,  1,  9]]
With the diagonal zeroed, D = L - L^T = [[0, 2, -2], [-2, 0, -2], [2, 2, 0]];
scores s_i = mean over all 3 columns (zero diagonal included) = (0, -4/3, 4/3).
(Averaging over the 2 off-diagonal columns would give (0, -2, 2).)
sigmoid values from the math module:
  sigmoid(4/3) = 0.791391472673955, sigmoid(-4/3) = 0.20860852732604496, sigmoid(8/3) = 0.935030830871336
  sigmoid(2) = 0.8807970779778823, sigmoid(1) = 0.7310585786300049, sigmoid(3) = 0.9525741268224334,
  sigmoid(-1) = 0.2689414213699951, sigmoid(-2) = 0.11920292202211755, sigmoid(-3) = 0.04742587317756678,
  sigmoid(-1.5) = 0.18242552380635635
"""

import numpy as np
import pytest

from selfplay.judging.win_matrix import aggregated_scores, bradley_terry, from_pairwise_logits

L3 = np.array([[9.0, 2.0, 1.0],
               [0.0, 9.0, -1.0],
               [3.0, 1.0, 9.0]])


def test_bradley_terry():
    p = bradley_terry(np.array([0.0, 1.0, 3.0]))
    expected = np.array([[0.5, 0.2689414213699951, 0.04742587317756678],
                         [0.7310585786300049, 0.5, 0.11920292202211755],
                         [0.9525741268224334, 0.8807970779778823, 0.5]])
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p + p.T, np.ones((3, 3)), atol=1e-12)


def test_bradley_terry_temperature():
    # (0 - 3) / 2 = -1.5
    assert bradley_terry(np.array([0.0, 1.0, 3.0]), temperature=2.0)[0, 2] == pytest.approx(0.18242552380635635)


def test_aggregated_scores_include_zero_diagonal_in_mean():
    np.testing.assert_allclose(aggregated_scores(L3), [0.0, -4 / 3, 4 / 3], rtol=0, atol=1e-12)
    assert L3[0, 0] == 9.0  # the caller's array is not modified


def test_aggregated_win_matrix():
    p = from_pairwise_logits(L3, "aggregated")
    expected = np.array([[0.5, 0.791391472673955, 0.20860852732604496],
                         [0.20860852732604496, 0.5, 0.06496916912866407],
                         [0.791391472673955, 0.935030830871336, 0.5]])
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-12)


def test_direct_win_matrix():
    p = from_pairwise_logits(L3, "direct")
    expected = np.array([[0.5, 0.8807970779778823, 0.7310585786300049],
                         [0.5, 0.5, 0.2689414213699951],
                         [0.9525741268224334, 0.7310585786300049, 0.5]])
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-12)
    # direct probabilities need not be complementary: P[0,2] + P[2,0] = 0.73 + 0.95
    assert p[0, 2] + p[2, 0] > 1.5


def test_unknown_rule():
    with pytest.raises(ValueError):
        from_pairwise_logits(L3, "mean")
