"""Preference losses as pure functions of summed log-probs (docs/algorithms.md has the formulas),
and the spec each one trains by.

Every loss takes `policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
reference_rejected_logps` (each shape (B,), summed over response tokens) positionally, its
parameters as keywords, and returns the per-example loss (B,).

`LOSSES` maps a recipe's `train.loss` to a `LossSpec`: what the loss needs beyond the log-probs
(per-pair columns of pairs.parquet, values derived from the batch, per-step state) and what it
adds to the training history. The trainer calls `spec.loss(...)` and knows no loss by name, so a
new loss, stateful or not, is a function and a spec here; `selfplay validate` checks a spec's
`pair_columns` against the columns the recipe's pair builder declares.
"""

import inspect
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

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
             beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023): loss = (z - 1/(2*beta))**2, z from SUMMED log-probs.

    This is the form docs/algorithms.md gives (the iterative-DPO recipes' IPO). TRL's IPO divides
    each log-ratio by its completion length instead; that form is not offered (no recipe in
    docs/algorithms.md uses it), so the two agree only on one-token completions.
    """
    chosen_ratio, rejected_ratio = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                               reference_chosen_logps, reference_rejected_logps)
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
    (Pang et al. 2024) normalises per example, NLL_i / |y_w,i|, and that is what the trainer
    passes (`chosen_mean_nll`, through the spec). Both agree when chosen lengths are equal.
    """
    return dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta=beta) + nll_weight * chosen_nll


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
    chosen_ratio, rejected_ratio = _log_ratios(policy_chosen_logps, policy_rejected_logps,
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


class LossState(Protocol):
    """Per-step state of a loss, one per training stage (built with its number of optimizer steps),
    saved in the in-stage checkpoints so a resumed stage continues it."""

    def step_options(self, step: int, options: Mapping[str, float]) -> dict[str, float]:
        """The loss keywords of optimizer step `step` (from 0): the recipe's options and the state's."""

    def after_step(self, record: Mapping[str, float], beta: float, options: Mapping[str, float]) -> dict[str, float]:
        """Take in the step's history record (mean loss and rewards); return the fields to log with it."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


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


def chosen_mean_nll(policy_chosen_logps: torch.Tensor, chosen_response_mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean token NLL of the chosen responses, NLL_i / |y_w,i| (the RPO paper's form;
    |y_w,i| counts the response tokens the mask marks, at least 1)."""
    return -policy_chosen_logps / chosen_response_mask.sum(-1).clamp(min=1)


def loss_over_eta_sq(record: Mapping[str, float], beta: float) -> dict[str, float]:
    """SPPO's eta = 1/beta makes the raw loss ~1/beta^2: log it on the eta^2 scale too."""
    return {"loss_over_eta_sq": record["loss"] * beta ** 2}


@dataclass(frozen=True)
class LossSpec:
    """A loss and everything the trainer must feed it.

    pair_columns: per-pair float columns of pairs.parquet, passed as (B,) tensors under their names;
    batch_inputs: (keyword, fn(policy_chosen_logps, chosen_response_mask)) values derived from the batch;
    state: builds the per-step state from the stage's total optimizer steps (None: stateless);
    state_options: the keywords the state sets each step (not settable in train.loss_options);
    step_metrics: fn(record, beta) -> extra fields for each step's history record.
    """

    fn: Callable[..., torch.Tensor]
    pair_columns: tuple[str, ...] = ()
    batch_inputs: tuple[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], ...] = ()
    state: Callable[[int], LossState] | None = None
    state_options: tuple[str, ...] = ()
    step_metrics: Callable[[Mapping[str, float], float], dict[str, float]] | None = None

    def __post_init__(self):
        keywords = {p.name for p in inspect.signature(self.fn).parameters.values() if p.kind == p.KEYWORD_ONLY}
        named = [*self.pair_columns, *(name for name, _ in self.batch_inputs), *self.state_options]
        unknown = [name for name in named if name not in keywords]
        if unknown:
            raise TypeError(f"{self.fn.__name__} has no keyword {unknown[0]!r}")

    @property
    def options(self) -> tuple[str, ...]:
        """The recipe-settable options (train.loss_options): float keywords the trainer does not set."""
        return tuple(p.name for p in inspect.signature(self.fn).parameters.values()
                     if p.kind == p.KEYWORD_ONLY and p.annotation is float and p.name != "beta"
                     and p.name not in self.state_options)

    def loss(self, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *, beta: float,
             columns: Mapping[str, torch.Tensor], chosen_response_mask: torch.Tensor,
             options: Mapping[str, float]) -> torch.Tensor:
        """The per-example loss of a micro-batch, exactly as the trainer computes it.

        columns: at least this spec's pair_columns; chosen_response_mask: (B, T), 1 on chosen
        response tokens; options: the step's keywords (recipe options, and the state's if any).
        """
        derived = {name: derive(policy_chosen_logps, chosen_response_mask) for name, derive in self.batch_inputs}
        return self.fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                       beta=beta, **{name: columns[name] for name in self.pair_columns}, **derived, **options)


LOSSES: dict[str, LossSpec] = {
    "sppo": LossSpec(sppo_loss, pair_columns=("chosen_win_rate", "rejected_win_rate"), step_metrics=loss_over_eta_sq),
    "sppo_single": LossSpec(sppo_single_loss, pair_columns=("chosen_beats_rejected",), step_metrics=loss_over_eta_sq),
    "sppo_hard": LossSpec(sppo_hard_loss, step_metrics=loss_over_eta_sq),
    "dpo": LossSpec(dpo_loss),
    "ipo": LossSpec(ipo_loss),
    "drift": LossSpec(drift_loss, batch_inputs=(("chosen_nll", chosen_mean_nll),)),
    "selfie": LossSpec(selfie_loss, state=SelfieState, state_options=("threshold",)),
}
