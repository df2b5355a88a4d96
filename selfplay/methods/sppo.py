"""SPPO (Self-Play Preference Optimization, Wu et al. 2024; code: uclaml/SPPO).

Pair rule `sppo`: best vs worst sample with their estimated win rates Phat; losses `sppo`
(the paper's squared regression onto eta * (Phat - 1/2)), `sppo_single` (the single pairwise
probability instead of Phat) and `sppo_hard` (TRL's hard-label form). The reference is pi_t.
"""

from collections.abc import Mapping

import numpy as np
import torch

from selfplay.methods.base import Method, PairRule
from selfplay.methods.dpo import best_worst_pairs
from selfplay.train.losses import LossSpec, log_ratios


def sppo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
              beta: float, chosen_win_rate: torch.Tensor, rejected_win_rate: torch.Tensor) -> torch.Tensor:
    """SPPO (uclaml/SPPO): squared regression of log-ratios onto eta * (Phat - 1/2), eta = 1/beta.

    loss = ((a_w - eta*(Phat_w - 0.5))**2 + (a_l - eta*(Phat_l - 0.5))**2) / 2
    With beta=1e-3 the loss starts near 1e5: expected, not a divergence.
    """
    eta = 1.0 / beta
    chosen_ratio, rejected_ratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                              reference_chosen_logps, reference_rejected_logps)
    return ((chosen_ratio - eta * (chosen_win_rate - 0.5)) ** 2
            + (rejected_ratio - eta * (rejected_win_rate - 0.5)) ** 2) / 2


def sppo_single_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                     reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
                     beta: float, chosen_beats_rejected: torch.Tensor) -> torch.Tensor:
    """SPPO with the single pairwise probability P_wl = P(y_w beats y_l) instead of Phat.

    loss = ((a_w - eta*(P_wl - 0.5))**2 + (a_l + eta*(P_wl - 0.5))**2) / 2,  eta = 1/beta
    (the same as `sppo_loss` with Phat_w = P_wl and Phat_l = 1 - P_wl).
    """
    eta = 1.0 / beta
    chosen_ratio, rejected_ratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                              reference_chosen_logps, reference_rejected_logps)
    target = eta * (chosen_beats_rejected - 0.5)
    return ((chosen_ratio - target) ** 2 + (rejected_ratio + target) ** 2) / 2


def sppo_hard_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                   reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
                   beta: float) -> torch.Tensor:
    """TRL's `sppo_hard` (Phat_w = 1, Phat_l = 0), exactly as TRL 1.16 defines it:

    loss = (a_w - 0.5/beta)**2 + (a_l + 0.5/beta)**2

    Unlike `sppo_loss` there is NO division by 2 (TRL does not halve it), so
    sppo_hard_loss == 2 * sppo_loss(..., Phat_w=1, Phat_l=0).
    """
    chosen_ratio, rejected_ratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                              reference_chosen_logps, reference_rejected_logps)
    return (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2


def loss_over_eta_sq(record: Mapping[str, float], beta: float) -> dict[str, float]:
    """SPPO's eta = 1/beta makes the raw loss ~1/beta^2: log it on the eta^2 scale too."""
    return {"loss_over_eta_sq": record["loss"] * beta ** 2}


# The per-pair targets each pair carries (besides the sample indices): what losses may ask for.
TARGET_COLUMNS = ("chosen_win_rate", "rejected_win_rate", "chosen_beats_rejected")


def sppo_pairs(win_matrix: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
    """Best vs worst sample, with their estimated win rates.

    Phat(y_i) = (1/K) * sum_j P[i, j], the self term 0.5 included. chosen = argmax score,
    rejected = argmin score (the judge's scalar scores; for a pairwise judge, llm-blender's
    mean-logit scores, which the pairs stage passes in), else argmax / argmin Phat. The other
    samples only enter through Phat. A group whose samples all tie is dropped. The same choice as
    best_worst, keeping only the win-rate targets.
    """
    return [{k: v for k, v in pair.items() if k not in ("chosen_score", "rejected_score")}
            for pair in best_worst_pairs(win_matrix, scores)]


METHOD = Method(
    "sppo",
    losses={"sppo": LossSpec(sppo_loss, default_beta=0.001, pair_columns=("chosen_win_rate", "rejected_win_rate"),
                             step_metrics=loss_over_eta_sq),
            "sppo_single": LossSpec(sppo_single_loss, default_beta=0.001, pair_columns=("chosen_beats_rejected",),
                                    step_metrics=loss_over_eta_sq),
            "sppo_hard": LossSpec(sppo_hard_loss, default_beta=0.001, step_metrics=loss_over_eta_sq)},
    pair_rules={"sppo": PairRule(sppo_pairs, TARGET_COLUMNS)},
)
