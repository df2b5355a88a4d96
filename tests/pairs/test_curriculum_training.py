"""Curry-DPO's training order (train.curriculum): which stages an iteration runs, which pairs
each trains on, and which policy each starts from and is scored against."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from selfplay.context import RunContext
from selfplay.methods.curriculum import EasyToHard, Tier, curriculum_pairs, train_stages
from selfplay.pipeline import stage_names
from selfplay.recipe import RecipeError, load_recipe
from selfplay.train.stage import Train

REPO = Path(__file__).resolve().parents[2]


def recipe(*overrides):
    return load_recipe(REPO / "recipes" / "curry-dpo-cpu.yaml", list(overrides))


def ranked_pairs() -> pa.Table:
    """Two prompts' curriculum pairs: prompt 0 has 3 (K=4, no ties), prompt 1 only 2 (a tie with the best)."""
    rows = []
    for prompt_id, scores in ((0, np.array([3.0, 0.0, 2.0, 1.0])), (1, np.array([5.0, 5.0, 1.0, 4.0]))):
        win_matrix = (scores[:, None] > scores[None, :]) + 0.5 * (scores[:, None] == scores[None, :])
        rows += [{"prompt_id": prompt_id, **pair} for pair in curriculum_pairs(win_matrix, scores)]
    return pa.Table.from_pylist(rows)


def test_tiers_are_k_minus_1_train_stages_ending_with_the_iterations_train_stage():
    assert stage_names(recipe(), 1) == ["generate", "annotate", "pairs", "train-tier1", "train-tier2", "train",
                                        "eval-gen", "evaluate"]
    stages = train_stages(recipe("generate.samples_per_prompt=5"), 2)
    assert [(s.name, s.starts_from, s.pairs_view) for s in stages] == [
        ("train-tier1", None, Tier(1, 4)), ("train-tier2", "train-tier1", Tier(2, 4)),
        ("train-tier3", "train-tier2", Tier(3, 4)), ("train", "train-tier3", Tier(4, 4))]
    assert stage_names(recipe("train.curriculum=pooled"), 1)[3:5] == ["train", "eval-gen"]
    assert stage_names(recipe("train.curriculum=sorted"), 1)[3:5] == ["train", "eval-gen"]


def test_tier_k_trains_every_prompts_rank_k_minus_1_pair():
    pairs = ranked_pairs()
    firsts = Tier(1, 3).select(pairs).to_pylist()
    assert [(p["prompt_id"], p["chosen"], p["rejected"]) for p in firsts] == [(0, 0, 1), (1, 0, 2)]  # largest gaps
    assert [(p["prompt_id"], p["rejected"]) for p in Tier(2, 3).select(pairs).to_pylist()] == [(0, 3), (1, 3)]
    assert [(p["prompt_id"], p["rejected"]) for p in Tier(3, 3).select(pairs).to_pylist()] == [(0, 2)]  # the tie: none
    assert sum(Tier(k, 3).select(pairs).num_rows for k in (1, 2, 3)) == pairs.num_rows


def test_sorted_keeps_every_pair_and_orders_them_by_rank():
    pairs = ranked_pairs()
    ordered = EasyToHard().select(pairs)
    assert ordered.num_rows == pairs.num_rows and ordered.column("order").to_pylist() == pairs.column("rank").to_pylist()


class _Policies(RunContext):
    """A context whose committed policies are named by stage: artifact(t, stage, 'policy').digest == stage."""

    def artifact(self, iteration, stage, name):
        from selfplay.artifacts import Artifact

        return Artifact(Path(stage), f"{stage}@{iteration}")

    def policy(self, source, iteration):
        from selfplay.artifacts import Artifact

        return Artifact(Path(source), f"{source}@{iteration}")


def test_each_tier_starts_from_and_is_scored_against_the_previous_tiers_policy():
    ctx = _Policies(run_dir=Path("."), recipe=recipe())
    first, second, last = train_stages(ctx.recipe, 2)
    assert (first.policy(ctx).digest, first.reference(ctx).digest) == ("entering@2", "entering@2")
    assert (second.policy(ctx).digest, second.reference(ctx).digest) == ("train-tier1@2", "train-tier1@2")
    assert (last.policy(ctx).digest, last.reference(ctx).digest) == ("train-tier2@2", "train-tier2@2")
    initial = train_stages(recipe("train.reference=initial"), 2)[1]
    assert (initial.policy(ctx).digest, initial.reference(ctx).digest) == ("train-tier1@2", "initial@2")
    assert second.config(ctx)["pairs_view"] == {"curriculum": "tiers", "tier": 2, "of": 3, "rank": 1}


def test_a_pooled_train_stage_keeps_the_config_digest_of_runs_made_before_curricula():
    plain = Train(1, recipe("train.curriculum=pooled").train)
    assert "curriculum" not in plain.config(None) and "pairs_view" not in plain.config(None)


def test_a_curriculum_order_needs_ranked_pairs():
    with pytest.raises(RecipeError) as error:
        recipe("pairs.type=best_worst")
    assert "train.curriculum 'tiers' orders ranked pairs: it needs pairs.type curriculum, got 'best_worst'" \
        in str(error.value)
