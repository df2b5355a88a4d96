"""Preference losses as pure functions of summed log-probs (ALGORITHMS.md has the formulas).

Every loss takes `policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
reference_rejected_logps` (each shape (B,), summed over response tokens) positionally, its
parameters as keywords, and returns the per-example loss (B,).
"""

from collections import deque

import numpy as np
import torch
import torch.nn.functional as F


def sppo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
              beta: float, chosen_win_rate: torch.Tensor, rejected_win_rate: torch.Tensor) -> torch.Tensor:
    """SPPO (uclaml/SPPO): squared regression of log-ratios onto eta * (Phat - 1/2), eta = 1/beta.

    loss = ((a_w - eta*(Phat_w - 0.5))**2 + (a_l - eta*(Phat_l - 0.5))**2) / 2
    With beta=1e-3 the loss starts near 1e5: expected, not a divergence.
    """
    eta = 1.0 / beta
    chosen_ratio = policy_chosen_logps - reference_chosen_logps
    rejected_ratio = policy_rejected_logps - reference_rejected_logps
    return ((chosen_ratio - eta * (chosen_win_rate - 0.5)) ** 2
            + (rejected_ratio - eta * (rejected_win_rate - 0.5)) ** 2) / 2


def _log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    return policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps


def sppo_single_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                     reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
                     beta: float, chosen_beats_rejected: torch.Tensor) -> torch.Tensor:
    """SPPO with the single pairwise probability P_wl = P(y_w beats y_l) instead of Phat.

    loss = ((a_w - eta*(P_wl - 0.5))**2 + (a_l + eta*(P_wl - 0.5))**2) / 2,  eta = 1/beta
    (the same as `sppo_loss` with Phat_w = P_wl and Phat_l = 1 - P_wl).
    """
    eta = 1.0 / beta
    chosen_ratio, rejected_ratio = _log_ratios(policy_chosen_logps, policy_rejected_logps,
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
    chosen_ratio, rejected_ratio = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                               reference_chosen_logps, reference_rejected_logps)
    return (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2


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
    chosen_ratio, rejected_ratio = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                               reference_chosen_logps, reference_rejected_logps)
    logits = beta * (chosen_ratio - rejected_ratio)
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
             beta: float, chosen_lengths: torch.Tensor | None = None,
             rejected_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """IPO (Azar et al. 2023): loss = (z - 1/(2*beta))**2.

    By default z is built from SUMMED log-probs, as in the paper and ALGORITHMS.md. TRL's IPO
    instead divides each log-ratio by its completion length (a per-token average):
    z = (lw_t - lw_ref)/|y_w| - (ll_t - ll_ref)/|y_l|. Pass `chosen_lengths` and
    `rejected_lengths` (token counts, shape (B,)) to reproduce TRL's normalisation (TRL says the
    IPO authors confirmed the paper's results used it).
    """
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("pass both chosen_lengths and rejected_lengths, or neither")
    chosen_ratio, rejected_ratio = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                               reference_chosen_logps, reference_rejected_logps)
    if chosen_lengths is not None:
        # TRL clamps at 1 token so an empty completion does not divide by zero.
        chosen_ratio = chosen_ratio / torch.as_tensor(chosen_lengths).clamp(min=1)
        rejected_ratio = rejected_ratio / torch.as_tensor(rejected_lengths).clamp(min=1)
    return (chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2


def drift_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
               beta: float, chosen_nll: torch.Tensor, nll_weight: float = 0.001) -> torch.Tensor:
    """DRIFT (cacayaya/DRIFT): DPO sigmoid plus an NLL term on the chosen response (RPO).

    loss = -log sigmoid(beta*z) + nll_weight * chosen_nll   (beta 0.1, nll_weight 0.001)
    DRIFT trains with TRL's `rpo_alpha` (alignment-handbook configs, `rpo_alpha: 0.001`), whose
    NLL is the per-token mean cross-entropy of the chosen responses, tokens pooled over the
    batch: sum_i NLL_i / sum_i |y_w,i| (a scalar added to every example); TRL 1.16 dropped
    `rpo_alpha` and spells it `loss_type=["sigmoid", "sft"], loss_weights=[1, alpha]`. The RPO paper
    (Pang et al. 2024) normalises per example, NLL_i / |y_w,i|. Both agree when chosen lengths
    are equal; pass `chosen_nll = -policy_chosen_logps / chosen_lengths` for the per-example
    form, or the broadcast pooled scalar for TRL's.
    """
    return dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta=beta) + nll_weight * chosen_nll


def selfie_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
                beta: float, alpha: float, threshold: float,
                mixed_margin: torch.Tensor | None = None) -> torch.Tensor:
    """Selfie/SPA noise-aware self-refinement loss (kingdy2002/SPA), reference = pi_t.

    z = (lw_t - ll_t) - (lw_ref - ll_ref)
    c = 1 if beta * z_mix > tau else 0      (tau = `threshold`; z_mix = `mixed_margin`, the same
                                             margin from logits mix*policy + (1-mix)*ref;
                                             defaults to z, i.e. mix = 1)
    loss = -log sigmoid(beta*z) * (1 - alpha + alpha*c) - log sigmoid(-beta*z) * (alpha - alpha*c)
    A pair the model is confident about (c = 1) is plain DPO; otherwise an alpha share of the
    loss trains towards the flipped label (label smoothing for suspected noisy labels).
    """
    chosen_ratio, rejected_ratio = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                               reference_chosen_logps, reference_rejected_logps)
    margin = chosen_ratio - rejected_ratio
    if mixed_margin is None:
        mixed_margin = margin
    # c is an indicator: no gradient flows through the threshold test.
    confident = (beta * mixed_margin.detach() > threshold).to(margin.dtype)
    logits = beta * margin
    return (-F.logsigmoid(logits) * (1.0 - alpha + alpha * confident)
            - F.logsigmoid(-logits) * (alpha - alpha * confident))


def selfie_alpha(step: int, total_steps: int, warmup_fraction: float = 0.2, alpha: float = 0.1) -> float:
    """Selfie's refinement weight: 0 during the first `warmup_fraction` of steps, then `alpha`.

    `step` counts optimiser steps from 0; steps with step < warmup_fraction * total_steps get 0.
    """
    return 0.0 if step < warmup_fraction * total_steps else alpha


class SelfieThreshold:
    """Selfie's tau: the `percentile`-th percentile of the last `window` batch-mean margins.

    Feed it the batch mean of beta*z (the same scale `selfie_loss` compares against tau) after
    each step with `update`; `value` is 0 until `window` margins have been seen. Percentiles
    interpolate linearly (numpy's default).
    """

    def __init__(self, window: int = 50, percentile: float = 10.0):
        self.window = window
        self.percentile = percentile
        self.margins: deque[float] = deque(maxlen=window)

    def update(self, batch_mean_margin: float) -> float:
        self.margins.append(float(batch_mean_margin))
        return self.value

    @property
    def value(self) -> float:
        if len(self.margins) < self.window:
            return 0.0
        return float(np.percentile(np.fromiter(self.margins, dtype=np.float64), self.percentile))

    def state_dict(self) -> dict:
        # So a resumed run continues with the same window (resume must restore it).
        return {"window": self.window, "percentile": self.percentile, "margins": list(self.margins)}

    def load_state_dict(self, state: dict) -> None:
        self.window, self.percentile = state["window"], state["percentile"]
        self.margins = deque(state["margins"], maxlen=self.window)


LOSSES = {
    "sppo": sppo_loss,
    "sppo_single": sppo_single_loss,
    "sppo_hard": sppo_hard_loss,
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "drift": drift_loss,
    "selfie": selfie_loss,
}
