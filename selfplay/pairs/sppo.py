"""SPPO pair rule (uclaml/SPPO): best vs worst sample, with their estimated win rates.

Phat(y_i) = (1/K) * sum_j P[i, j], the self term 0.5 included. chosen = argmax score,
rejected = argmin score (the judge's scalar scores; for a pairwise judge, llm-blender's
mean-logit scores, which the pairs stage passes in), else argmax / argmin Phat. The other
samples only enter through Phat. A group whose samples all tie is dropped. The same choice as
best_worst, keeping only the win-rate targets.
"""

import numpy as np

from selfplay.pairs.best_worst import best_worst_pairs

# The per-pair targets each pair carries (besides the sample indices): what losses may ask for.
TARGET_COLUMNS = ("chosen_win_rate", "rejected_win_rate", "chosen_beats_rejected")


def sppo_pairs(win_matrix: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
    """The best_worst pair with only the targets SPPO trains on (the Phat win rates)."""
    return [{k: v for k, v in pair.items() if k not in ("chosen_score", "rejected_score")}
            for pair in best_worst_pairs(win_matrix, scores)]
