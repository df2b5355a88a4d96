"""Curry-DPO's pair rule (Pattnaik et al. 2024): the best sample against each of the others.

Pair rule `curriculum`; it trains with any loss that needs no more than its columns (dpo, ipo...).
Samples are ranked by score (or, without scalar scores, by mean win rate
Phat(y_i) = (1/K) * sum_j P[i, j], self term included). The best sample is paired with every
other sample whose score is strictly lower (ties with the best are dropped), giving up to
K - 1 pairs. Each carries `gap` = score(best) - score(other) and `rank`, ordered easy to hard:
rank 0 is the largest gap (best vs worst), the last rank the smallest (best vs runner-up).
Equal gaps keep the lower sample index first, so ranks are always 0, 1, ..., n-1 and the
k-th curriculum set is "every prompt's rank-k pair". The list comes back sorted by rank.

`train.curriculum` chooses how the ranked pairs are trained (below): pooled, sorted, or in tiers.
"""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from selfplay.methods.base import Method, PairRule
from selfplay.methods.dpo import ranking_of

# The per-pair targets each pair carries (besides the sample indices): what losses may ask for.
TARGET_COLUMNS = ("rank", "gap", "chosen_score", "rejected_score", "chosen_win_rate", "rejected_win_rate",
                  "chosen_beats_rejected")


def curriculum_pairs(win_matrix: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
    win_matrix = np.asarray(win_matrix, dtype=np.float64)
    win_rates, ranking = ranking_of(win_matrix, scores)
    best = int(np.argmax(ranking))
    others = [i for i in range(len(ranking)) if ranking[i] < ranking[best]]
    # Largest gap first (= lowest score first); a stable sort keeps index order within ties.
    others.sort(key=lambda i: ranking[best] - ranking[i], reverse=True)
    return [{"chosen": best, "rejected": other, "rank": rank,
             "gap": float(ranking[best] - ranking[other]),
             "chosen_score": float(ranking[best]), "rejected_score": float(ranking[other]),
             "chosen_win_rate": float(win_rates[best]), "rejected_win_rate": float(win_rates[other]),
             "chosen_beats_rejected": float(win_matrix[best, other])}
            for rank, other in enumerate(others)]


# -- training in curriculum order (train.curriculum) -----------------------------------------
# `pooled` trains once on every pair in the usual seeded order (today's behaviour). `sorted` trains
# once, each epoch easy to hard: the trainer visits lower `order` first (selfplay.train.data).
# `tiers` is Curry-DPO's iterative training: K - 1 train stages in the iteration, tier k on every
# prompt's rank k-1 pair, each starting from (and, with train.reference previous, scored against)
# the previous tier's policy. The last tier is the iteration's `train` stage, so what enters the
# next iteration, the evaluation and every reader of `train` see the finished curriculum.


@dataclass(frozen=True)
class Tier:
    """Tier `index` (1-based) of `count`: every prompt's pair of rank index - 1."""

    index: int
    count: int

    def describe(self) -> dict:
        return {"curriculum": "tiers", "tier": self.index, "of": self.count, "rank": self.index - 1}

    def select(self, pairs: pa.Table) -> pa.Table:
        return pairs.filter(pc.equal(pairs["rank"], self.index - 1))


@dataclass(frozen=True)
class EasyToHard:
    """Every pair, with `order` = its rank: each epoch trains the easiest pairs first."""

    def describe(self) -> dict:
        return {"curriculum": "sorted"}

    def select(self, pairs: pa.Table) -> pa.Table:
        return pairs.append_column("order", pairs["rank"])


def train_stages(recipe, iteration: int) -> list:
    from selfplay.train.stage import Train

    if recipe.train.curriculum == "pooled":
        return [Train(iteration, recipe.train)]
    if recipe.train.curriculum == "sorted":
        return [Train(iteration, recipe.train, pairs_view=EasyToHard())]
    count = recipe.generate.samples_per_prompt - 1  # the most pairs a prompt can have
    names = [f"train-tier{k}" for k in range(1, count)] + ["train"]
    return [Train(iteration, recipe.train, name=name, pairs_view=Tier(k, count),
                  starts_from=names[k - 2] if k > 1 else None)
            for k, name in enumerate(names, start=1)]


METHOD = Method("curriculum", pair_rules={"curriculum": PairRule(curriculum_pairs, TARGET_COLUMNS, train=train_stages)})
