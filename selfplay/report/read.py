"""Reading runs for `selfplay compare`: per-iteration evaluation metrics and their confidence
intervals, how a fork relates to its parent, and eval samples to show side by side.

Only committed stages count (a manifest that says done), so a run still going shows what it
has. A fork's shared iterations are its own folders of hard links to the parent's files; where
an older fork lacks one, the parent's folder is read instead.

Intervals are read in whichever shape the evaluate stage wrote them: flat `<m>_ci_low` /
`<m>_ci_high` (or `_low`/`_high`, `_lower`/`_upper`), `<m>_ci: [low, high]`, a nested
`<m>: {"value" | "mean" | "estimate": x, "ci_low": .., "ci_high": .. | "ci": [low, high]}`, or
a top-level `"ci" | "intervals": {<m>: [low, high]}`. Other nested numbers (say length
quantiles `{"p50": .., "p90": ..}`) become metrics named `<m>.<key>`. A metric without an
interval simply has none.

Iteration 0 is the initial policy: its win rates are 0.5 and its KL 0 by definition
(decide.KEY_METRICS), and its mean length is that of the baseline stage's samples.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from selfplay import runs
from selfplay.artifacts import Artifact, ArtifactDamaged
from selfplay.lineage import LineageError, changed_keys, flatten, read_run
from selfplay.report.decide import KEY_METRICS
from selfplay.stage_names import BASELINE, EVAL_GEN, EVAL_PARQUET, EVALUATE, METRICS_JSON, SAMPLES_PARQUET

VALUE_KEYS = ("value", "mean", "estimate", "point")
LOW_KEYS = ("ci_low", "low", "lower", "lo")
HIGH_KEYS = ("ci_high", "high", "upper", "hi")
BOUND_SUFFIXES = (("_ci_low", "_ci_high"), ("_lower", "_upper"), ("_low", "_high"))
PAIR_SUFFIXES = ("_ci95", "_ci", "_interval")
INTERVAL_TABLES = ("ci", "intervals", "confidence_intervals")
# The metrics a user asks about first; any other numeric metric follows in file order.
LEADING_METRICS = ("win_rate_vs_initial", "win_rate_vs_previous", "mean_response_tokens")
# Recipe keys a fork always changes, which say nothing about the experiment.
BOOKKEEPING_KEYS = {"name", "tracking.group"}


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _pair(value) -> tuple[float, float] | None:
    """(low, high) from [low, high] or {"ci_low"|"low"|...: .., "ci_high"|"high"|...: ..}."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = _number(value[0]), _number(value[1])
    elif isinstance(value, dict):
        low = next((_number(value[k]) for k in LOW_KEYS if _number(value.get(k)) is not None), None)
        high = next((_number(value[k]) for k in HIGH_KEYS if _number(value.get(k)) is not None), None)
    else:
        return None
    return None if low is None or high is None else (min(low, high), max(low, high))


def split_metrics(raw: dict, prefix: str = "") -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """(values, intervals) of one evaluate metrics dict; non-numeric entries are dropped."""
    values, intervals, pairs = {}, {}, {}
    for key, item in raw.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict):
            value_key = next((k for k in VALUE_KEYS if _number(item.get(k)) is not None), None)
            if value_key is not None:
                values[name] = _number(item[value_key])
                interval = _pair(item) or _pair(item.get("ci")) or _pair(item.get("interval"))
                if interval:
                    intervals[name] = interval
                used = {value_key, "ci", "interval", *LOW_KEYS, *HIGH_KEYS}
                values.update(split_metrics({k: v for k, v in item.items() if k not in used}, f"{name}.")[0])
            elif not prefix and key in INTERVAL_TABLES:
                pairs.update({sub: p for sub, entry in item.items() if (p := _pair(entry))})
            else:
                nested_values, nested_intervals = split_metrics(item, f"{name}.")
                values.update(nested_values)
                intervals.update(nested_intervals)
        elif (number := _number(item)) is not None:
            values[name] = number
        elif (interval := _pair(item)) and (suffix := next((s for s in PAIR_SUFFIXES if name.endswith(s)), None)):
            pairs[name[:-len(suffix)]] = interval
    for name in list(values):
        for low_suffix, high_suffix in BOUND_SUFFIXES:
            base = name[:-len(low_suffix)]
            if name.endswith(low_suffix) and base in values and base + high_suffix in values:
                low, high = values.pop(name), values.pop(base + high_suffix)
                intervals[base] = (min(low, high), max(low, high))
                break
    intervals.update({name: pair for name, pair in pairs.items() if name in values})
    return values, intervals


@dataclass
class RunSeries:
    """One run's evaluation history, as compare shows it."""

    run_dir: Path
    name: str
    run_id: str
    planned_iterations: int
    parent: dict | None = None          # run.json's pointer, plus "name" when the parent is readable
    changes: list[str] = field(default_factory=list)   # recipe keys the fork changed, "key: old -> new"
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    intervals: dict[int, dict[str, tuple[float, float]]] = field(default_factory=dict)
    initial: dict[str, float] = field(default_factory=dict)   # iteration 0's key metrics, the initial policy
    method: str = ""                                           # train.loss, with the pair rule when it differs

    def value(self, iteration: int, metric: str) -> float | None:
        return (self.initial if iteration == 0 else self.metrics.get(iteration, {})).get(metric)

    def interval(self, iteration: int, metric: str) -> tuple[float, float] | None:
        return self.intervals.get(iteration, {}).get(metric)

    def iterations_of(self, metric: str) -> list[int]:
        """The iterations with a value of the metric, 0 (the initial policy) included where known."""
        return [t for t in [0, *sorted(self.metrics)] if self.value(t, metric) is not None]

    @property
    def final_iteration(self) -> int | None:
        return max(self.metrics, default=None)

    @property
    def label(self) -> str:
        return f"{self.name} [{self.run_id[:6]}]"

    @property
    def first_own_iteration(self) -> int:
        return self.parent["iteration"] if self.parent else 1

    def is_shared(self, iteration: int) -> bool:
        """Whether the iteration was the parent's, before the fork."""
        return self.parent is not None and iteration < self.first_own_iteration

    @property
    def fork_point(self) -> str | None:
        """"fork of NAME [id] at iteration N", or None for a root run."""
        if not self.parent:
            return None
        parent = self.parent.get("name") or Path(self.parent["run_dir"]).name
        return f"fork of {parent} [{str(self.parent.get('run_id', ''))[:6]}] at iteration {self.first_own_iteration}"

    @property
    def relation(self) -> str | None:
        """fork_point with the changed keys: "... at iteration N (train.beta: 0.02 -> 0.05)"."""
        if not self.parent:
            return None
        return f"{self.fork_point} ({'; '.join(self.changes)})" if self.changes else self.fork_point

    def stage_path(self, iteration: int, stage: str) -> Path | None:
        """The committed folder of a stage: the run's own, or for a shared iteration the parent's."""
        own = runs.StageDir(self.run_dir, iteration, stage)
        if _is_done(own):
            return own.path
        if self.is_shared(iteration) or (iteration == 0 and self.parent):
            theirs = runs.StageDir(self.parent["run_dir"], iteration, stage)
            if _is_done(theirs):
                return theirs.path
        return None


def _is_done(stage: runs.StageDir) -> bool:
    manifest = stage.manifest()
    return bool(manifest) and manifest.get("status") == "done"


def _evaluate_metrics(path: Path) -> dict | None:
    """The evaluate stage's metrics.json, or its manifest's copy when the file is unreadable."""
    try:
        metrics = runs.read_json(path / METRICS_JSON)
    except (OSError, ValueError):
        metrics = (runs.read_json(path / runs.MANIFEST) or {}).get("metrics")
    return metrics if isinstance(metrics, dict) else None


def _fork_changes(parent_recipe: dict, recipe: dict, limit: int = 6) -> list[str]:
    flat_old, flat_new = flatten(parent_recipe), flatten(recipe)
    keys = [k for k in changed_keys(parent_recipe, recipe) if k not in BOOKKEEPING_KEYS]
    text = [f"{k}: {flat_old.get(k, '-')} -> {flat_new.get(k, '-')}" for k in keys[:limit]]
    return text + ([f"and {len(keys) - limit} more"] if len(keys) > limit else [])


def read_series(run_dir: Path) -> RunSeries:
    """A run's metrics per evaluated iteration. Raises LineageError for a directory that is
    not a run (no or damaged run.json)."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    series = RunSeries(run_dir, info["name"], info["run_id"], info["recipe"]["iterations"], info.get("parent"),
                       method=_method_of(info["recipe"]))
    if series.parent:
        series.parent = dict(series.parent)
        try:
            parent = read_run(Path(series.parent["run_dir"]))
            series.parent["name"] = parent["name"]
            series.changes = _fork_changes(parent["recipe"], info["recipe"])
        except LineageError:
            pass  # the parent was moved or deleted: the fork still has its own copies
    for iteration in range(1, series.planned_iterations + 1):
        path = series.stage_path(iteration, EVALUATE)
        raw = _evaluate_metrics(path) if path else None
        if raw is None:
            continue
        values, intervals = split_metrics(raw)
        series.metrics[iteration] = values
        series.intervals[iteration] = intervals
    series.initial = _initial_metrics(series)
    return series


def _method_of(recipe: dict) -> str:
    keys = flatten(recipe)
    loss, rule = keys.get("train.loss") or "", keys.get("pairs.type") or ""
    return loss if rule in ("", loss) else f"{loss} ({rule} pairs)"


def _initial_metrics(series: RunSeries) -> dict[str, float]:
    """Iteration 0's key metrics (for those the run evaluates): the definitional ones, and the mean
    length of the baseline's samples as response_stats counts it. Raises ArtifactDamaged."""
    evaluated = {name for values in series.metrics.values() for name in values}
    initial = {m.name: m.at_initial for m in KEY_METRICS if m.at_initial is not None and m.name in evaluated}
    path = series.stage_path(0, BASELINE)
    if path is not None and "mean_response_tokens" in evaluated:
        table = _read_output(path / SAMPLES_PARQUET)
        if "token_ids" in table.column_names and table.num_rows:
            lengths = [len(ids) for ids in table.column("token_ids").to_pylist()]
            initial["mean_response_tokens"] = sum(lengths) / len(lengths)
    return initial


def metric_names(all_series: list[RunSeries]) -> list[str]:
    """Every metric any run has, the leading ones first, then in the order they were met."""
    seen = {}
    for series in all_series:
        for values in series.metrics.values():
            seen.update(dict.fromkeys(values))
    return [m for m in LEADING_METRICS if m in seen] + [m for m in seen if m not in LEADING_METRICS]


# -- example generations ---------------------------------------------------------------------
@dataclass
class Example:
    """One eval prompt at one iteration: the first sample of each run (and of the initial policy)."""

    iteration: int
    prompt_id: int
    prompt: str
    initial: dict[str, str]                    # column label -> text
    responses: dict[str, str | None]           # run label -> text (None: no sample)
    prompt_win_rates: dict[str, float]         # run label -> this prompt's win rate vs initial
    rationales: dict[str, str] = field(default_factory=dict)   # run label -> the judge's rationale, if any


def _read_output(path: Path) -> pa.Table:
    """A stage's committed parquet output, read as the stages read theirs (Artifact.table): its
    bytes checked against the manifest's sha256, so a damaged or rewritten file is named, never
    shown. Raises ArtifactDamaged."""
    manifest = runs.read_json(path.parent / runs.MANIFEST) or {}
    try:
        return Artifact(path, "", (manifest.get("output_files") or {}).get(path.name, {})).table()
    except (pa.ArrowException, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArtifactDamaged(f"{path}: not a readable Parquet file ({reason}); `selfplay resume` redoes the stage "
                              f"that made it") from None


def _first_samples(path: Path) -> dict[int, tuple[str, str]]:
    """prompt_id -> (prompt, text of the lowest sample_idx) of a samples.parquet."""
    rows = _read_output(path).select(["prompt_id", "prompt", "sample_idx", "text"]).to_pylist()
    first = {}
    for row in sorted(rows, key=lambda r: (r["prompt_id"], r["sample_idx"])):
        first.setdefault(row["prompt_id"], (row["prompt"], row["text"]))
    return first


def _prompt_scores(path: Path | None) -> dict[int, tuple[float, str | None]]:
    """prompt_id -> (its win rate vs initial, the judge's rationale when eval.parquet has a
    `rationale` column, as an LLM judge may write)."""
    if path is None or not (path / EVAL_PARQUET).exists():
        return {}
    table = _read_output(path / EVAL_PARQUET)
    if not {"prompt_id", "win_rate"} <= set(table.column_names):
        return {}
    rationales = table.column("rationale").to_pylist() if "rationale" in table.column_names else [None] * table.num_rows
    return {pid: (rate, rationale) for pid, rate, rationale in
            zip(table.column("prompt_id").to_pylist(), table.column("win_rate").to_pylist(), rationales)}


def _baselines(all_series: list[RunSeries]) -> dict[str, dict[int, tuple[str, str]]]:
    """The initial policy's samples, once per distinct baseline (a fork shares its parent's)."""
    digests = {}
    for series in all_series:
        path = series.stage_path(0, BASELINE)
        if path is None:
            continue
        digest = (runs.read_json(path / runs.MANIFEST)["outputs"]).get(SAMPLES_PARQUET)
        if digest not in digests:
            digests[digest] = (series.label, _first_samples(path / SAMPLES_PARQUET))
    if len(digests) == 1:
        return {"initial policy": next(iter(digests.values()))[1]}
    return {f"initial ({label})": samples for label, samples in digests.values()}


def read_examples(all_series: list[RunSeries], per_iteration: int = 3,
                  chosen: list[int] | None = None) -> list[Example]:
    """Up to `per_iteration` eval prompts per evaluated iteration, the same prompts in every run
    where the runs share them (lowest prompt ids first)."""
    initial = _baselines(all_series)
    iterations = sorted(set(chosen) if chosen else {t for s in all_series for t in range(1, s.planned_iterations + 1)})
    examples = []
    for iteration in iterations:
        samples, scores = {}, {}
        for series in all_series:
            path = series.stage_path(iteration, EVAL_GEN)
            if path is not None:
                samples[series.label] = _first_samples(path / SAMPLES_PARQUET)
                scores[series.label] = _prompt_scores(series.stage_path(iteration, EVALUATE))
        if not samples:
            continue
        common = set.intersection(*(set(s) for s in samples.values()))
        others = set().union(*(set(s) for s in samples.values())) - common
        for prompt_id in (sorted(common) + sorted(others))[:per_iteration]:
            prompt = next(s[prompt_id][0] for s in samples.values() if prompt_id in s)
            examples.append(Example(
                iteration, prompt_id, prompt,
                {label: base[prompt_id][1] for label, base in initial.items() if prompt_id in base},
                {s.label: samples[s.label][prompt_id][1] if prompt_id in samples.get(s.label, {}) else None
                 for s in all_series},
                {label: by_prompt[prompt_id][0] for label, by_prompt in scores.items() if prompt_id in by_prompt},
                {label: by_prompt[prompt_id][1] for label, by_prompt in scores.items()
                 if prompt_id in by_prompt and by_prompt[prompt_id][1]}))
    return examples
