"""The report's judgements, as pure functions of numbers: which run is best in a column, when a
difference is beyond the noise, which metric is constant, where the iteration ticks go, and
when a run's numbers suggest a gamed or silent judge.

A difference is claimed only from 95% intervals that do not overlap (conservative: two
intervals can overlap a little while the interval of the difference still excludes 0, but
compare has each run's interval, not the paired per-prompt differences). A win rate beats the
policy it is measured against when its own interval excludes 0.5.
"""

import math
from dataclasses import dataclass

Interval = tuple[float, float]


@dataclass(frozen=True)
class KeyMetric:
    """A metric the headline and the key curves show: its evaluate name (selfplay/evaluate/stage.py),
    its column title, whether higher is better (None: no direction, never "best"), and its value at
    iteration 0, the initial policy, where that is known by definition."""

    name: str
    title: str
    higher_is_better: bool | None
    at_initial: float | None = None
    even: float | None = None          # the value of a tie with the opponent (a win rate's 0.5)


KEY_METRICS = (
    KeyMetric("win_rate_vs_initial", "win rate vs initial", True, 0.5, 0.5),
    KeyMetric("win_rate_vs_previous", "win rate vs previous", True, 0.5, 0.5),
    KeyMetric("length_controlled_win_rate_vs_initial", "LC win rate vs initial", True, 0.5, 0.5),
    KeyMetric("kl_vs_initial", "KL to initial", None, 0.0),
    KeyMetric("mean_response_tokens", "mean length (tokens)", None),      # at 0: the baseline's samples
    KeyMetric("judge_agreement_vs_initial", "judge agreement", True),     # only with an evaluate.judge
)
KEY_NAMES = tuple(metric.name for metric in KEY_METRICS)
SILENT_JUDGE_FRACTION = 0.5     # no_signal_fraction at or above this: the judge hardly tells responses apart
LENGTH_JUMP_RATIO = 1.5         # mean length growing this much between evaluated iterations


def best_runs(values: dict[str, float | None], higher_is_better: bool | None) -> set[str]:
    """The runs holding the column's best value (all of them on a tie); none for a column without
    a direction or with fewer than two runs that have a value."""
    present = {run: value for run, value in values.items() if value is not None}
    if higher_is_better is None or len(present) < 2:
        return set()
    best = max(present.values()) if higher_is_better else min(present.values())
    return {run for run, value in present.items() if value == best}


def intervals_apart(a: Interval, b: Interval) -> bool:
    """Whether two intervals do not overlap (touching counts as overlap)."""
    return a[0] > b[1] or b[0] > a[1]


def clear_lead(best: str, intervals: dict[str, Interval | None]) -> bool:
    """Whether the best run's interval is apart from every other run's: a difference the intervals
    allow. A run without an interval leaves the lead unproven."""
    others = [interval for run, interval in intervals.items() if run != best]
    mine = intervals.get(best)
    return bool(others) and mine is not None and all(other is not None and intervals_apart(mine, other)
                                                     for other in others)


def excludes(interval: Interval | None, value: float) -> bool:
    """Whether an interval lies wholly on one side of value (a win rate's interval and 0.5)."""
    return interval is not None and (interval[0] > value or interval[1] < value)


def is_constant(values: list[float], tolerance: float = 1e-9) -> bool:
    """Whether every value is the same (relative tolerance): such a metric is a table cell, not a plot."""
    return bool(values) and max(values) - min(values) <= tolerance * max(1.0, max(abs(v) for v in values))


def iteration_ticks(last: int, most: int = 11) -> list[int]:
    """Integer ticks from iteration 0 to `last`, at most `most` of them, always including 0."""
    step = max(1, math.ceil((last + 1) / most))
    return list(range(0, max(last, 0) + 1, step))


def judge_warnings(by_iteration: dict[int, dict[str, float]]) -> list[str]:
    """Why a run's judge may be silent or gamed: at the last evaluated iteration a no-signal
    fraction at or above SILENT_JUDGE_FRACTION, or anywhere a mean length growing by
    LENGTH_JUMP_RATIO or more from one evaluated iteration (0: the initial policy) to the next."""
    warnings, iterations = [], sorted(by_iteration)
    if iterations:
        silent = by_iteration[iterations[-1]].get("no_signal_fraction")
        if silent is not None and silent >= SILENT_JUDGE_FRACTION:
            warnings.append(f"silent judge: {silent:.0%} of comparisons gave no signal at iteration {iterations[-1]}")
    lengths = [(t, by_iteration[t]["mean_response_tokens"]) for t in iterations
               if by_iteration[t].get("mean_response_tokens") is not None]
    for (before, old), (after, new) in zip(lengths, lengths[1:]):
        if old > 0 and new / old >= LENGTH_JUMP_RATIO:
            warnings.append(f"length jump: {old:.3g} -> {new:.3g} tokens from iteration {before} to {after} "
                            f"(a judge rewarding length?)")
    return warnings
