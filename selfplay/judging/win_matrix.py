"""Turning raw judgments into K x K win matrices P[i, j] = P(sample i beats sample j).

Judges keep their raw output (scalar scores, or pairwise logits) in the judgments artifact;
these pure functions derive the win matrix, so changing the rule needs no re-judging.

Scalar scores are scale-free: with `annotate.temperature: auto` (the default) the
Bradley-Terry temperature is the stage's score spread (`score_spread`), so multiplying every
score by c > 0 or adding an offset gives the same win matrices, pairs and training.

Two readings of one comparison are kept apart:
- `win_matrix`: the preference probability P[i, j] that SPPO's Phat targets are made of;
- `comparison_wins`: whether the judge prefers i to j (1, tie 0.5, 0), which the reported win
  rate counts; for a scalar judge it is unchanged by any increasing transform of the scores.
"""

import numpy as np

from selfplay.failures import DeadEnd

# An empty response (the policy ended its turn at once) never reaches a judge. For a scalar judge
# it is scored this many temperatures below the group's lowest score (P of beating it ~ 1 - 2e-22,
# on any score scale); for a pairwise judge it gets this logit gap. Two empty responses tie.
EMPTY_RESPONSE_GAP = 50.0
# A prompt whose every sample has Phat within this distance of 0.5 teaches SPPO nothing.
NO_SIGNAL_TOLERANCE = 0.01


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(+large) = inf gives exactly 0, as it should
        return 1.0 / (1.0 + np.exp(-x))


def bradley_terry(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P[i, j] = sigmoid((s_i - s_j) / temperature); the diagonal is exactly 0.5."""
    scores = np.asarray(scores, dtype=np.float64)
    return _sigmoid((scores[:, None] - scores[None, :]) / temperature)


def score_spread(score_groups: list) -> float:
    """The pooled standard deviation of within-prompt score deviations over a stage's prompts:
    sqrt(sum_p sum_i (s_pi - mean_p)^2 / sum_p (n_p - 1)).

    Only finite scores count (NaN marks an empty response, see fill_empty_scores); a prompt
    with fewer than two of them adds nothing. Within-prompt deviations ignore each prompt's
    offset (a reward model's scores drift from prompt to prompt), and pooling over every prompt
    keeps one prompt whose samples barely differ from setting the scale. 0.0 when every prompt's
    scores tie (or nothing was scored).

    Scores near the float limit (a scoring function returning -1e307) overflow a plain mean
    and its squares, so the sums run on the scores divided by a power of two near the largest
    |score| and the spread is scaled back. Scaling by a power of two is exact, so ordinary
    scores give bit-for-bit the plain formula's result; the spread itself is inf only when it
    exceeds the float range.
    """
    groups = [scores[np.isfinite(scores)] for scores in (np.asarray(g, dtype=np.float64) for g in score_groups)]
    groups = [scores for scores in groups if len(scores) >= 2]
    largest = max((float(np.abs(scores).max()) for scores in groups), default=0.0)
    if largest == 0.0:
        return 0.0
    exponent = int(np.frexp(largest)[1])  # |scores| / 2**exponent < 1
    scaled = [np.ldexp(scores, -exponent) for scores in groups]
    squares = sum(float(np.sum((scores - scores.mean()) ** 2)) for scores in scaled)
    dof = sum(len(scores) - 1 for scores in groups)
    with np.errstate(over="ignore"):  # a spread beyond the float range is inf (resolve_temperature refuses it)
        return float(np.ldexp(np.sqrt(squares / dof), exponent))


def resolve_temperature(setting: str | float, score_groups: list) -> float:
    """The Bradley-Terry temperature a stage uses: a float as given, or for "auto" the stage's
    score_spread (a difference of one spread gives P = sigmoid(1) = 0.73). When every score
    ties there is no scale to find and no signal to scale; 1.0 is used (every P is 0.5 then,
    except against empty responses). A spread beyond the float range is an error naming the
    scores' range: an infinite temperature would make every P 0.5 and train on noise."""
    if setting != "auto":
        return float(setting)
    spread = score_spread(score_groups)
    if not np.isfinite(spread):
        finite = np.concatenate([np.asarray(g, dtype=np.float64) for g in score_groups])
        finite = finite[np.isfinite(finite)]
        raise DeadEnd(f"the judge's scores range from {finite.min():.6g} to {finite.max():.6g}: their spread "
                         f"is beyond the float range, so annotate.temperature=auto has no finite temperature; "
                         f"return scores of a smaller magnitude (only their order and spread matter)")
    return spread if spread > 0 else 1.0


def fill_empty_scores(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Replace NaN (an empty response) by the lowest finite score minus EMPTY_RESPONSE_GAP
    temperatures; all empty: all 0 (they tie)."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    empty = np.isnan(scores)
    if empty.all():
        return np.zeros_like(scores)
    if empty.any():
        scores[empty] = scores[~empty].min() - EMPTY_RESPONSE_GAP * temperature
    return scores


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


def _wins_from_margins(margins: np.ndarray) -> np.ndarray:
    return (margins > 0).astype(np.float64) + 0.5 * (margins == 0)


def comparison_wins(scores: np.ndarray | None = None, pairwise_logits: np.ndarray | None = None) -> np.ndarray:
    """W[i, j] = 1 if the judge prefers i to j, 0.5 for an exact tie, else 0 (diagonal 0.5).

    Scalar judges: s_i > s_j. Pairwise judges: L[i, j] > L[j, i], the judge's own verdict on
    the pair with both orders heard (PairRM is not antisymmetric); independent of the win-matrix
    rule and of the other samples of the group.
    """
    if pairwise_logits is not None:
        logits = np.asarray(pairwise_logits, dtype=np.float64)
        return _wins_from_margins(logits - logits.T)
    scores = np.asarray(scores, dtype=np.float64)
    return _wins_from_margins(scores[:, None] - scores[None, :])


def has_no_signal(win_matrix: np.ndarray, tolerance: float = NO_SIGNAL_TOLERANCE) -> bool:
    """True when every sample's Phat = mean_j P[i, j] lies within `tolerance` of 0.5."""
    win_rates = np.asarray(win_matrix, dtype=np.float64).mean(axis=1)
    return bool(np.all(np.abs(win_rates - 0.5) < tolerance))
