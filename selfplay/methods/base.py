"""What a training method is made of, declared in the method's own module.

A `Method` names its losses (`LossSpec`s, selfplay.train.losses) and its pair rules (`PairRule`).
Generic code (recipe validation, the pipeline, the prompt pool, the pairs stage, the trainer)
looks a recipe's `train.loss` and `pairs.type` up in the merged registries of
selfplay.methods and asks the spec or the rule what it needs; it never branches on a method's
name. Adding a method is one module under selfplay/methods/ and one line in its `METHODS`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from selfplay.train.losses import LossSpec


@dataclass(frozen=True)
class PairRule:
    """A `pairs.type`: how an iteration's samples become pairs.parquet rows.

    build: fn(win_matrix (K, K), scores (K,) or None) -> pairs, each a dict with the sample index
        of every name in `responses` and the per-pair `targets`; None where the rule's own
        stages (`front`) write the pairs;
    targets: the per-pair float columns each pair carries (what a loss's pair_columns may ask for);
    responses: the responses each pair names; pairs.parquet holds `<name>`, `<name>_idx` and
        `<name>_token_ids` for each (a loss's spec says which it trains on);
    min_samples: the fewest generate.samples_per_prompt the rule can rank;
    front: fn(recipe, iteration) -> the stages that replace generate/annotate/pairs (DRIFT);
    records: fn(path) -> the prompt file's records, each with a "prompt" (DRIFT's DSAT records),
        kept on the run context; None: a plain prompt file (prompts.field);
    samples_per_prompt: the responses `front` samples per prompt (None: generate.samples_per_prompt);
    train: fn(recipe, iteration) -> the train stages that replace the one `train` stage (Curry-DPO's
        tiers; the last is named `train`); None: one `train` stage.
    """

    build: Callable | None
    targets: tuple[str, ...] = ()
    responses: tuple[str, ...] = ("chosen", "rejected")
    min_samples: int = 2
    front: Callable | None = None
    records: Callable[[str], list[dict]] | None = None
    samples_per_prompt: int | None = None
    train: Callable | None = None


@dataclass(frozen=True)
class Method:
    """One training method: the losses and pair rules it adds, by the names recipes use."""

    name: str
    losses: dict[str, LossSpec] = field(default_factory=dict)
    pair_rules: dict[str, PairRule] = field(default_factory=dict)
