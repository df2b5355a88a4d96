"""Diversity of a policy's samples for one prompt: distinct-n on token ids.

distinct-n of a prompt = (number of different n-grams) / (number of n-grams) over its K
samples together, n-grams taken within each sample (none spans two samples). 1.0 when no
n-gram repeats anywhere in the K samples; 1/K when the K samples are one text repeated
(and that text repeats no n-gram itself). Token ids, not words: no tokenizer is needed and
the count matches what the policy produced. A sample shorter than n adds no n-gram; a prompt
without any n-gram has no distinct-n and is left out of the mean over prompts.
"""

import numpy as np
import pyarrow as pa

from selfplay.artifacts import group_by_prompt


def distinct_n(sequences: list[list[int]], n: int) -> float | None:
    """Unique n-grams / all n-grams over `sequences` (one prompt's samples); None if there are none."""
    if n < 1:
        raise ValueError(f"distinct-n needs n >= 1, got {n}")
    grams = [tuple(seq[i:i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def mean_distinct_n(samples: pa.Table, n: int) -> float | None:
    """Mean over prompts of distinct_n of each prompt's samples (`token_ids` column); None when
    no prompt has an n-gram."""
    values = [distinct_n([r["token_ids"] for r in rows], n) for _, _, rows in group_by_prompt(samples)]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
