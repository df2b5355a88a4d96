"""Turning raw judgments into K x K win matrices P[i, j] = P(sample i beats sample j).

Judges keep their raw output (scalar scores, or pairwise logits) in the judgments artifact;
these pure functions derive the win matrix, so changing the rule needs no re-judging.
"""

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def bradley_terry(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P[i, j] = sigmoid((s_i - s_j) / temperature); the diagonal is exactly 0.5."""
    scores = np.asarray(scores, dtype=np.float64)
    return _sigmoid((scores[:, None] - scores[None, :]) / temperature)


def aggregated_scores(pairwise_logits: np.ndarray) -> np.ndarray:
    """llm-blender's `rank(return_scores=True)`: s_i = mean_j (L[i, j] - L[j, i]).

    The mean runs over all K columns, the zero diagonal included (as the released SPPO code).
    """
    logits = np.asarray(pairwise_logits, dtype=np.float64).copy()
    np.fill_diagonal(logits, 0.0)
    return (logits - logits.T).mean(axis=1)


def from_pairwise_logits(pairwise_logits: np.ndarray, rule: str = "aggregated") -> np.ndarray:
    """Win matrix from PairRM logits L[i, j] (logit that i beats j).

    aggregated: sigmoid(s_i - s_j) from the mean-logit scores (the released SPPO code).
    direct:     sigmoid(L[i, j]) (uclaml/SPPO issue 15), diagonal 0.5.
    """
    if rule == "aggregated":
        return bradley_terry(aggregated_scores(pairwise_logits))
    if rule == "direct":
        matrix = _sigmoid(np.asarray(pairwise_logits, dtype=np.float64))
        np.fill_diagonal(matrix, 0.5)
        return matrix
    raise ValueError(f"win_matrix rule must be 'aggregated' or 'direct', got {rule!r}")
