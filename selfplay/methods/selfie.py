"""Selfie / SPA (self-generated preference data; code: kingdy2002/SPA): loss `selfie`.

The noise-aware self-refinement loss and its per-step state (alpha's warm-up schedule and the
threshold tau over recent margins). Its pairs come from `best_worst` under the `selfie` judge
(selfplay.judging.selfie), and a seed stage trains on labelled pairs first.
"""

from collections import deque
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from selfplay.methods.base import Method
from selfplay.train.losses import LossSpec, log_ratios


def selfie_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
                beta: float, alpha: float, threshold: float) -> torch.Tensor:
    """Selfie/SPA noise-aware self-refinement loss (kingdy2002/SPA), reference = pi_t.

    z = (lw_t - ll_t) - (lw_ref - ll_ref)
    c = 1 if beta * z > tau else 0      (tau = `threshold`)
    loss = -log sigmoid(beta*z) * (1 - alpha + alpha*c) - log sigmoid(-beta*z) * (alpha - alpha*c)
    A pair the model is confident about (c = 1) is plain DPO; otherwise an alpha share of the
    loss trains towards the flipped label (label smoothing for suspected noisy labels).
    SPA tests c on the margin of mixed logits mix*policy + (1-mix)*ref with mix = 1 by default
    (docs/algorithms.md), which is z itself: only that default is offered.
    """
    chosen_ratio, rejected_ratio = log_ratios(policy_chosen_logps, policy_rejected_logps,
                                              reference_chosen_logps, reference_rejected_logps)
    margin = chosen_ratio - rejected_ratio
    # c is an indicator: no gradient flows through the threshold test.
    confident = (beta * margin.detach() > threshold).to(margin.dtype)
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


class SelfieState:
    """Selfie's per-step state: alpha (`selfie_alpha`'s warm-up schedule unless the recipe sets
    train.loss_options.alpha) and tau (`SelfieThreshold` over the logged batch-mean margins)."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.threshold = SelfieThreshold()

    def step_options(self, step: int, options: Mapping[str, float]) -> dict[str, float]:
        options = dict(options)
        options.setdefault("alpha", selfie_alpha(step, self.total_steps))
        options["threshold"] = self.threshold.value
        return options

    def after_step(self, record: Mapping[str, float], beta: float, options: Mapping[str, float]) -> dict[str, float]:
        # beta*z on the scale selfie_loss compares with tau: the step's mean rewards over the global batch
        margin = beta * (record["chosen_reward"] - record["rejected_reward"])
        return {"alpha": options["alpha"], "threshold": self.threshold.update(margin)}

    def state_dict(self) -> dict:
        return self.threshold.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.threshold.load_state_dict(state)


METHOD = Method("selfie", losses={"selfie": LossSpec(selfie_loss, default_beta=0.1, state=SelfieState, state_options=("threshold",))})
