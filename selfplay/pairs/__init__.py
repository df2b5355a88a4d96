"""Pair builders: from one prompt's K x K win matrix (and raw scores, if the judge gave them)
to zero or more training pairs. Each returns dicts with the sample indices `chosen`,
`rejected` and any per-pair targets the loss needs (e.g. SPPO's win rates).

PAIR_TARGETS: the per-pair target columns each `pairs.type` emits (each builder module declares
its own), which `selfplay validate` checks against what `train.loss` needs. DRIFT's pairs come
from their own stage (selfplay.pairs.drift), not from a win matrix, hence no builder here.
"""

from selfplay.pairs import best_worst, curriculum, drift, sppo
from selfplay.pairs.best_worst import best_worst_pairs
from selfplay.pairs.curriculum import curriculum_pairs
from selfplay.pairs.sppo import sppo_pairs

PAIR_BUILDERS = {"sppo": sppo_pairs, "best_worst": best_worst_pairs, "curriculum": curriculum_pairs}
# Pair rules that train their pairs in stages of their own (Curry-DPO's tiers): fn(recipe, iteration) -> stages
TRAIN_STAGES = {"curriculum": curriculum.train_stages}
PAIR_TARGETS = {"sppo": sppo.TARGET_COLUMNS, "best_worst": best_worst.TARGET_COLUMNS,
                "curriculum": curriculum.TARGET_COLUMNS, "drift": drift.TARGET_COLUMNS}
