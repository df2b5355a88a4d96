"""The contract between a loss and the trainer: `LossSpec` (what a loss needs) and `LossState`
(per-step state), plus the batch values several losses share.

Every loss is a pure function of summed response log-probs (each shape (B,)): `policy_chosen_logps,
policy_rejected_logps` positionally, then `reference_chosen_logps, reference_rejected_logps` when
it trains against a reference, its parameters as keywords; it returns the per-example loss (B,).
The losses themselves live with their methods (selfplay/methods/, docs/algorithms.md has the
formulas), and `selfplay.methods.LOSSES` maps a recipe's `train.loss` to its spec. The trainer
calls `spec.loss(...)` and knows no loss by name, so a new loss, stateful or reference-free or
not, is a function and a spec in its method's module; `selfplay validate` checks a spec's
`pair_columns` and `responses` against what the recipe's pair rule declares.
"""

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch


def log_ratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    """(a_w, a_l): the chosen and rejected log-ratios against the reference."""
    return policy_chosen_logps - reference_chosen_logps, policy_rejected_logps - reference_rejected_logps


def mean_token_logps(policy_logps: Mapping[str, torch.Tensor], response_masks: Mapping[str, torch.Tensor],
                     response: str) -> torch.Tensor:
    """Per-example mean token log-prob of one response, logp_i / |y_i| (|y_i| counts the response
    tokens its mask marks, at least 1)."""
    return policy_logps[response] / response_masks[response].sum(-1).clamp(min=1)


def chosen_mean_logps(policy_logps, response_masks) -> torch.Tensor:
    return mean_token_logps(policy_logps, response_masks, "chosen")


def rejected_mean_logps(policy_logps, response_masks) -> torch.Tensor:
    return mean_token_logps(policy_logps, response_masks, "rejected")


class LossState(Protocol):
    """Per-step state of a loss, one per training stage (built with its number of optimizer steps),
    saved in the in-stage checkpoints so a resumed stage continues it."""

    def step_options(self, step: int, options: Mapping[str, float]) -> dict[str, float]:
        """The loss keywords of optimizer step `step` (from 0): the recipe's options and the state's."""

    def after_step(self, record: Mapping[str, float], beta: float, options: Mapping[str, float]) -> dict[str, float]:
        """Take in the step's history record (mean loss and rewards); return the fields to log with it."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# fn(policy log-probs by response name, response masks by name) -> a (B,) keyword value of the loss
BatchInput = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    """A loss and everything the trainer must feed it.

    pair_columns: per-pair float columns of pairs.parquet, passed as (B,) tensors under their names;
    batch_inputs: (keyword, BatchInput) values derived from the batch's log-probs and masks;
    responses: the responses of each pair the trainer scores (pairs.parquet's `<name>_token_ids`),
        always chosen and rejected first; e.g. TPO's gold response as a third;
    needs_reference: whether the loss takes reference log-probs; without, the trainer loads no
        reference model and runs no reference pass (and the rewards it logs are the policy's log-probs);
    state: builds the per-step state from the stage's total optimizer steps (None: stateless);
    state_options: the keywords the state sets each step (not settable in train.loss_options);
    step_metrics: fn(record, beta) -> extra fields for each step's history record.
    default_beta: train.beta when the recipe leaves it out: the value of the method's paper or
        reference code (../shared/ALGORITHMS.md). Each loss declares it: one shared default would
        give DPO SPPO's 0.001, a hundredth of its own.
    """

    fn: Callable[..., torch.Tensor]
    default_beta: float
    pair_columns: tuple[str, ...] = ()
    batch_inputs: tuple[tuple[str, BatchInput], ...] = ()
    responses: tuple[str, ...] = ("chosen", "rejected")
    needs_reference: bool = True
    state: Callable[[int], LossState] | None = None
    state_options: tuple[str, ...] = ()
    step_metrics: Callable[[Mapping[str, float], float], dict[str, float]] | None = None

    def __post_init__(self):
        parameters = inspect.signature(self.fn).parameters.values()
        keywords = {p.name for p in parameters if p.kind == p.KEYWORD_ONLY}
        named = [*self.pair_columns, *(name for name, _ in self.batch_inputs), *self.state_options]
        unknown = [name for name in named if name not in keywords]
        if unknown:
            raise TypeError(f"{self.fn.__name__} has no keyword {unknown[0]!r}")
        positional = sum(p.kind == p.POSITIONAL_OR_KEYWORD for p in parameters)
        if positional != (4 if self.needs_reference else 2):
            raise TypeError(f"{self.fn.__name__} takes {positional} log-prob arguments; a loss with "
                            f"needs_reference={self.needs_reference} takes {4 if self.needs_reference else 2}")
        if self.responses[:2] != ("chosen", "rejected"):
            raise TypeError(f"{self.fn.__name__}: responses must start with chosen, rejected")

    @property
    def option_types(self) -> dict[str, type]:
        """The recipe-settable options (train.loss_options) and their types: float and bool keywords
        the trainer does not set."""
        return {p.name: p.annotation for p in inspect.signature(self.fn).parameters.values()
                if p.kind == p.KEYWORD_ONLY and p.annotation in (float, bool) and p.name != "beta"
                and p.name not in self.state_options}

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(self.option_types)

    def loss(self, policy_logps: Mapping[str, torch.Tensor], reference_logps: Mapping[str, torch.Tensor] | None, *,
             beta: float, columns: Mapping[str, torch.Tensor], response_masks: Mapping[str, torch.Tensor],
             options: Mapping[str, float]) -> torch.Tensor:
        """The per-example loss of a micro-batch, exactly as the trainer computes it.

        policy_logps: summed log-probs (B,) of each of `responses`; reference_logps: those of chosen
        and rejected under the reference (ignored without needs_reference); columns: at least this
        spec's pair_columns; response_masks: (B, T) per response, 1 on its tokens; options: the
        step's keywords (recipe options, and the state's if any).
        """
        derived = {name: derive(policy_logps, response_masks) for name, derive in self.batch_inputs}
        references = (reference_logps["chosen"], reference_logps["rejected"]) if self.needs_reference else ()
        return self.fn(policy_logps["chosen"], policy_logps["rejected"], *references, beta=beta,
                       **{name: columns[name] for name in self.pair_columns}, **derived, **options)
