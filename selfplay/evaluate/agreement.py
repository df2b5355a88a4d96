"""How often two judges (the training judge and `evaluate.judge`) agree on the same comparisons.

Each judge's verdict on a comparison is its win for the policy: 1, 0.5 (an exact tie) or 0
(head_to_head.HeadToHead.comparisons["win"]). Agreement on one comparison is 1 - |a - b|:
1 when the verdicts are the same (ties included), 0 when they are opposite, and 0.5 when one
judge ties and the other decides, the same half credit a tie gets in the win rate. Without
ties it is the plain fraction of comparisons on which the judges agree. A policy that
over-fits its training judge shows as a training-judge win rate that climbs while agreement
with an independent judge falls.
"""

import numpy as np


def judge_agreement(wins_a, wins_b) -> float:
    """Mean of 1 - |a - b| over comparisons; the two arrays must list the same comparisons in
    the same order (two judge_against calls on the same samples do)."""
    a, b = np.asarray(wins_a, dtype=np.float64), np.asarray(wins_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"judge_agreement needs two equally long, non-empty lists of verdicts, got shapes "
                         f"{a.shape} and {b.shape}")
    if np.any((a < 0) | (a > 1)) or np.any((b < 0) | (b > 1)):
        raise ValueError("judge_agreement: verdicts must lie in [0, 1] (1 win, 0.5 tie, 0 loss)")
    return float(np.mean(1.0 - np.abs(a - b)))
