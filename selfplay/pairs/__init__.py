"""Pair builders: from one prompt's K x K win matrix (and raw scores, if the judge gave them)
to zero or more training pairs. Each returns dicts with the sample indices `chosen`,
`rejected` and any per-pair targets the loss needs (e.g. SPPO's win rates).
"""

from selfplay.pairs.best_worst import best_worst_pairs
from selfplay.pairs.curriculum import curriculum_pairs
from selfplay.pairs.sppo import sppo_pairs

PAIR_BUILDERS = {"sppo": sppo_pairs, "best_worst": best_worst_pairs, "curriculum": curriculum_pairs}
