"""Iterative DPO (RLHFlow Online-RLHF, Snorkel PairRM-DPO): best vs worst sample, DPO or IPO.

Pair rule `best_worst`; losses `dpo` (sigmoid, with cDPO's label smoothing) and `ipo`.
"""

import numpy as np
import torch
import torch.nn.functional as F

from selfplay.methods.base import Method, PairRule
from selfplay.train.losses import LossSpec, log_ratios


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
             beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO sigmoid loss, conservative form (cDPO; RLHFlow uses label_smoothing 0.1):

    z = (lw_t - lw_ref) - (ll_t - ll_ref)
    loss = -(1 - e) * log sigmoid(beta*z) - e * log sigmoid(-beta*z),  e = label_smoothing
    label_smoothing=0 matches TRL 1.16's `loss_type="sigmoid"`. TRL 1.16's sigmoid IGNORES
    `label_smoothing` (TRL < 1.0 applied it as here); in 1.16 this form survives only in `aot`
    (equal to it for a single pair), so a cDPO recipe cannot be delegated to TRL's sigmoid.
    """
    chosen_ratio, rejected_ratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                              reference_chosen_logps, reference_rejected_logps)
    logits = beta * (chosen_ratio - rejected_ratio)
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
             beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023): loss = (z - 1/(2*beta))**2, z from SUMMED log-probs.

    This is the form docs/algorithms.md gives (the iterative-DPO recipes' IPO). TRL's IPO divides
    each log-ratio by its completion length instead; that form is not offered (no recipe in
    docs/algorithms.md uses it), so the two agree only on one-token completions.
    """
    chosen_ratio, rejected_ratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                              reference_chosen_logps, reference_rejected_logps)
    return (chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2


# The per-pair targets each pair carries (besides the sample indices): what losses may ask for.
TARGET_COLUMNS = ("chosen_score", "rejected_score", "chosen_win_rate", "rejected_win_rate", "chosen_beats_rejected")


def ranking_of(win_matrix: np.ndarray, scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(win rates Phat, the ranking score): the judge's scalar scores, else Phat itself.
    Phat(y_i) = (1/K) * sum_j P[i, j], the self term 0.5 included."""
    win_rates = np.asarray(win_matrix, dtype=np.float64).mean(axis=1)
    return win_rates, win_rates if scores is None else np.asarray(scores, dtype=np.float64)


def best_worst_pairs(win_matrix: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
    """chosen = argmax score, rejected = argmin score; without scalar scores (a pairwise judge) the
    score is the mean win rate Phat. A group whose best and worst scores tie is dropped. Ties for
    first/last place go to the lowest index."""
    win_matrix = np.asarray(win_matrix, dtype=np.float64)
    win_rates, ranking = ranking_of(win_matrix, scores)
    chosen, rejected = int(np.argmax(ranking)), int(np.argmin(ranking))
    if ranking[chosen] == ranking[rejected]:
        return []
    return [{"chosen": chosen, "rejected": rejected,
             "chosen_score": float(ranking[chosen]), "rejected_score": float(ranking[rejected]),
             "chosen_win_rate": float(win_rates[chosen]), "rejected_win_rate": float(win_rates[rejected]),
             "chosen_beats_rejected": float(win_matrix[chosen, rejected])}]


METHOD = Method(
    "dpo",
    losses={"dpo": LossSpec(dpo_loss, default_beta=0.1), "ipo": LossSpec(ipo_loss, default_beta=0.1)},
    pair_rules={"best_worst": PairRule(best_worst_pairs, TARGET_COLUMNS)},
)
