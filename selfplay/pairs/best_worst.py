"""Iterative DPO pair rule (RLHFlow Online-RLHF, Snorkel PairRM-DPO): best vs worst sample.

chosen = argmax score, rejected = argmin score; without scalar scores (a pairwise judge) the
score is the mean win rate Phat(y_i) = (1/K) * sum_j P[i, j] (self term 0.5 included). A group
whose best and worst scores tie is dropped. Ties for first/last place go to the lowest index.
"""

import numpy as np

# The per-pair targets each pair carries (besides the sample indices): what losses may ask for.
TARGET_COLUMNS = ("chosen_score", "rejected_score", "chosen_win_rate", "rejected_win_rate", "chosen_beats_rejected")


def best_worst_pairs(win_matrix: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
    win_matrix = np.asarray(win_matrix, dtype=np.float64)
    win_rates = win_matrix.mean(axis=1)
    ranking = win_rates if scores is None else np.asarray(scores, dtype=np.float64)
    chosen, rejected = int(np.argmax(ranking)), int(np.argmin(ranking))
    if ranking[chosen] == ranking[rejected]:
        return []
    return [{"chosen": chosen, "rejected": rejected,
             "chosen_score": float(ranking[chosen]), "rejected_score": float(ranking[rejected]),
             "chosen_win_rate": float(win_rates[chosen]), "rejected_win_rate": float(win_rates[rejected]),
             "chosen_beats_rejected": float(win_matrix[chosen, rejected])}]
