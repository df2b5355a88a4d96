"""Reward shaping of a scalar judge against the reference policy's responses (PAR and two kin).

PAR (Preference As Reward, PorUna-byte/PAR trainers/reward_shaper.py) turns a raw reward r(x, y)
into a bounded score centred on the reference policy: the judge's win probability of y against
M reference responses y_ref_m of the same prompt,
    par:      (1/M) sum_m sigmoid(k (r - r_ref_m))             in (0, 1)
    centered: (1/M) sum_m (r - r_ref_m)                          unbounded (the paper's baseline)
    lsc:      log sigmoid(k (r - q85))                           q85: the 0.85 quantile of a normal
                                                                 fit to the M reference rewards
Every one is unchanged by an offset of the judge and monotone in r (so a prompt's ranking of its
own responses is the judge's); what changes is how far apart the scores are: PAR caps a
reward the policy inflates past every reference, the reward-hacking case.

PAR's length penalty (the code) comes first, on every raw reward: r -= per_token * (tokens - after)
beyond `after` tokens. An empty response (a NaN score, judging.calls) stays NaN; an empty
reference response counts as the worst response seen for its prompt.
"""

from collections.abc import Callable

import numpy as np

Q85_STANDARD_NORMAL = 1.0364333894937898  # Phi^-1(0.85)


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def par(scores: np.ndarray, reference_scores: np.ndarray, k: float) -> np.ndarray:
    return np.exp(_log_sigmoid(k * (scores[:, None] - reference_scores[None, :]))).mean(axis=1)


def centered(scores: np.ndarray, reference_scores: np.ndarray, k: float) -> np.ndarray:
    return scores - reference_scores.mean()


def lsc(scores: np.ndarray, reference_scores: np.ndarray, k: float) -> np.ndarray:
    q85 = reference_scores.mean() + Q85_STANDARD_NORMAL * reference_scores.std()
    return _log_sigmoid(k * (scores - q85))


SHAPINGS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "par": par, "centered": centered, "lsc": lsc}


def length_penalized(scores, lengths, per_token: float, after: int) -> np.ndarray:
    """PAR's length penalty: each score minus per_token x its tokens beyond `after`."""
    scores, lengths = np.asarray(scores, dtype=np.float64), np.asarray(lengths, dtype=np.float64)
    return scores - per_token * np.maximum(lengths - after, 0.0)


def shape(kind: str, scores, reference_scores, k: float = 1.0) -> np.ndarray:
    """The shaped scores of one prompt's K responses against its M reference responses (raw
    rewards, length penalty already applied). NaN scores (empty responses) stay NaN; NaN
    reference scores take the lowest finite score of the prompt; no finite score: all NaN."""
    scores = np.asarray(scores, dtype=np.float64)
    reference_scores = np.asarray(reference_scores, dtype=np.float64).copy()
    if reference_scores.size == 0:
        raise ValueError("shaping needs at least one reference response per prompt")
    seen = np.concatenate([scores, reference_scores])
    if not np.isfinite(seen).any():
        return np.full_like(scores, np.nan)
    reference_scores[np.isnan(reference_scores)] = seen[np.isfinite(seen)].min()
    shaped = SHAPINGS[kind](np.nan_to_num(scores, nan=0.0), reference_scores, k)
    return np.where(np.isnan(scores), np.nan, shaped)
