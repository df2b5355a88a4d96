"""SPPO pair rule (uclaml/SPPO): best vs worst sample, with their estimated win rates.

Phat(y_i) = (1/K) * sum_j P[i, j], the self term 0.5 included. chosen = argmax score,
rejected = argmin score (the judge's scalar scores; for a pairwise judge, llm-blender's
mean-logit scores, which the pairs stage passes in), else argmax / argmin Phat. The other
samples only enter through Phat. A group whose samples all tie is dropped.
"""

import numpy as np

# The per-pair targets each pair carries (besides the sample indices): what losses may ask for.
TARGET_COLUMNS = ("chosen_win_rate", "rejected_win_rate", "chosen_beats_rejected")


def sppo_pairs(win_matrix: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
    win_rates = np.asarray(win_matrix, dtype=np.float64).mean(axis=1)
    ranking = win_rates if scores is None else np.asarray(scores, dtype=np.float64)
    chosen, rejected = int(np.argmax(ranking)), int(np.argmin(ranking))
    if ranking[chosen] == ranking[rejected]:
        return []
    return [{"chosen": chosen, "rejected": rejected,
             "chosen_win_rate": float(win_rates[chosen]), "rejected_win_rate": float(win_rates[rejected]),
             "chosen_beats_rejected": float(win_matrix[chosen, rejected])}]
