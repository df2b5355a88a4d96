"""Percentile bootstrap confidence interval of a mean over prompts.

The unit resampled is the prompt: the comparisons of one prompt share its difficulty, so
resampling single comparisons would understate the spread. Fixed seed, so the same values
always give the same interval.
"""

import numpy as np


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(low, high): the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the means of
    `resamples` resamples (with replacement, same size) of `values`."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"bootstrap_interval needs a non-empty 1-D list of values, got shape {values.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
