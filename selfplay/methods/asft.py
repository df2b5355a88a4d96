"""ASFT (Aligned SFT through absolute likelihood; the only public code: turbo-llm/turbo-alignment,
ASFTLoss): loss `asft`.

Reference-free and length-normalized: each response's absolute likelihood p = exp(lp), lp its
mean token log-prob, is pushed up for the chosen and down for the rejected one, instead of a
Bradley-Terry difference. Trains on any pair rule's chosen/rejected (best_worst in its recipe).
Defaults as turbo-alignment's: beta 1 (train.beta), lam 1, ce_coef 1; the paper's own lam is
unverified (docs/algorithms.md).
"""

import torch
import torch.nn.functional as F

from selfplay.methods.base import Method
from selfplay.train.losses import LossSpec, chosen_mean_logps, rejected_mean_logps

# p = exp(lp) is clipped below 1 so log(1 - p) stays finite for a response the policy is sure of.
MAX_PROBABILITY = 1 - 1e-7


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) of p = exp(mean_logps): lp - log1p(-min(exp(lp), 1 - 1e-7))."""
    return mean_logps - torch.log1p(-torch.clamp(torch.exp(mean_logps), max=MAX_PROBABILITY))


def asft_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, *, beta: float,
              chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, lam: float = 1.0,
              ce_coef: float = 1.0) -> torch.Tensor:
    """loss = -ce_coef * lp_w + lam * (-log sigmoid(beta * logodds(lp_w)) - log sigmoid(-beta * logodds(lp_l)))

    lp: mean token log-probs (the summed ones are not read). With beta = 1 the bracket is exactly
    -log p_w - log(1 - p_l).
    """
    alignment = (-F.logsigmoid(beta * log_odds(chosen_mean_logps))
                 - F.logsigmoid(-beta * log_odds(rejected_mean_logps)))
    return -ce_coef * chosen_mean_logps + lam * alignment


METHOD = Method("asft", losses={"asft": LossSpec(asft_loss, default_beta=1.0, needs_reference=False,
                                                 batch_inputs=(("chosen_mean_logps", chosen_mean_logps),
                                                               ("rejected_mean_logps", rejected_mean_logps)))})
