"""TPO (Triple Preference Optimization, Saeidi et al. 2024; code: sahsaeedi/TPO, TRL's
trl/experimental/tpo): loss `tpo` (TPO-L with `length_normalized`), pair rule `triple`.

Reference-free: a preference term between a chosen and a rejected response plus the NLL of a
third, gold response. `triple` takes TPO's own construction from K >= 3 ranked samples: gold =
best, chosen = second best, rejected = worst. Defaults as TRL's TPOConfig: alpha 1, gamma 0.5
(and beta 0.01: set train.beta, whose default is SPPO's).
Simplifications: the NLL is per example (NLL_i / |y_gold,i|) where TRL pools the gold tokens of
the batch (equal when the gold responses have equal lengths); no gold from the prompt file yet.
"""

import numpy as np
import torch
import torch.nn.functional as F

from selfplay.methods.base import Method, PairRule
from selfplay.methods.dpo import ranking_of
from selfplay.train.losses import LossSpec, chosen_mean_logps, mean_token_logps, rejected_mean_logps


def tpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, *, beta: float,
             chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, gold_nll: torch.Tensor,
             alpha: float = 1.0, gamma: float = 0.5, length_normalized: bool = False) -> torch.Tensor:
    """TPO (TRL's `loss_type="sigmoid"`) or TPO-L (`"tpo-l"`, length_normalized):

    delta = lp(y_w) - lp(y_l)                # lp summed (TPO) or mean token log-prob (TPO-L)
    pref  = -log sigmoid(beta * delta)       # TPO-L: -log sigmoid(beta * delta - gamma)
    loss  = pref + alpha * NLL(y_gold)       # NLL: mean token cross-entropy of the gold response
    gamma is TPO-L's target margin; plain TPO does not read it (as TRL).
    """
    if length_normalized:
        preference = -F.logsigmoid(beta * (chosen_mean_logps - rejected_mean_logps) - gamma)
    else:
        preference = -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
    return preference + alpha * gold_nll


def gold_mean_nll(policy_logps, response_masks) -> torch.Tensor:
    """Per-example mean token NLL of the gold responses, NLL_i / |y_gold,i|."""
    return -mean_token_logps(policy_logps, response_masks, "gold")


# The per-pair targets each triple carries (besides the sample indices): what losses may ask for.
TARGET_COLUMNS = ("gold_score", "chosen_score", "rejected_score", "gold_win_rate", "chosen_win_rate",
                  "rejected_win_rate", "chosen_beats_rejected")


def triple_pairs(win_matrix: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
    """gold = the best sample, chosen = the second best, rejected = the worst (K >= 3).

    Ranked by score, or without scalar scores by the mean win rate Phat (self term included); ties
    keep the lower sample index first. A group whose chosen and rejected tie is dropped (nothing to
    prefer); a gold tied with the chosen is kept.
    """
    win_matrix = np.asarray(win_matrix, dtype=np.float64)
    win_rates, ranking = ranking_of(win_matrix, scores)
    if len(ranking) < 3:
        raise ValueError(f"a triple needs at least 3 samples per prompt, got {len(ranking)}")
    order = sorted(range(len(ranking)), key=lambda i: -ranking[i])  # stable: lower index first within ties
    gold, chosen, rejected = order[0], order[1], order[-1]
    if ranking[chosen] == ranking[rejected]:
        return []
    return [{"chosen": chosen, "rejected": rejected, "gold": gold,
             "gold_score": float(ranking[gold]), "chosen_score": float(ranking[chosen]),
             "rejected_score": float(ranking[rejected]), "gold_win_rate": float(win_rates[gold]),
             "chosen_win_rate": float(win_rates[chosen]), "rejected_win_rate": float(win_rates[rejected]),
             "chosen_beats_rejected": float(win_matrix[chosen, rejected])}]


METHOD = Method(
    "tpo",
    losses={"tpo": LossSpec(tpo_loss, default_beta=0.01, responses=("chosen", "rejected", "gold"), needs_reference=False,
                            batch_inputs=(("chosen_mean_logps", chosen_mean_logps),
                                          ("rejected_mean_logps", rejected_mean_logps),
                                          ("gold_nll", gold_mean_nll)))},
    pair_rules={"triple": PairRule(triple_pairs, TARGET_COLUMNS, responses=("chosen", "rejected", "gold"),
                                   min_samples=3)},
)
