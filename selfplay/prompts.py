"""Prompt pools and their deterministic split into a held-out eval slice and disjoint
per-iteration slices (SPPO trains on new prompts each iteration).

Sources: JSONL (one object per line), Parquet, or a local HF `datasets` folder
(`save_to_disk`). Every prompt gets a stable `prompt_id` (its row index in the source).
"""

import json
from pathlib import Path

import numpy as np


class PromptError(ValueError):
    pass


def load_prompts(path: str, field: str = "prompt") -> list[str]:
    source = Path(path)
    if source.is_dir():
        import datasets

        rows = datasets.load_from_disk(str(source))
        if isinstance(rows, datasets.DatasetDict):
            rows = rows[next(iter(rows))]
        if field not in rows.column_names:
            raise PromptError(f"prompts.field: column {field!r} not in {source} (columns: {', '.join(rows.column_names)})")
        prompts = list(rows[field])
    elif source.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(source)
        if field not in table.column_names:
            raise PromptError(f"prompts.field: column {field!r} not in {source} (columns: {', '.join(table.column_names)})")
        prompts = table.column(field).to_pylist()
    elif source.suffix in (".jsonl", ".json"):
        prompts = [row[field] for row in read_jsonl_records(source, (field,), "a prompt (set prompts.field)")]
    else:
        raise PromptError(f"prompts.path: {source} must be .jsonl, .parquet or a datasets folder")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError(f"{source}: prompt {index} is empty or not a string")
    return prompts


def read_jsonl_records(path: str | Path, fields: tuple[str, ...], what: str) -> list[dict]:
    """JSONL rows, each required to hold non-empty strings in `fields`; errors name file:line."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        missing = [f for f in fields if not isinstance(row, dict) or not isinstance(row.get(f), str)
                   or not row[f].strip()]
        if missing:
            raise PromptError(f"{path}:{number}: {what} needs non-empty string fields {', '.join(fields)}; "
                              f"missing or empty: {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise PromptError(f"{path}: no records")
    return rows


def split_prompts(num_prompts: int, iterations: int, per_iteration: int, eval_size: int,
                  seed: int = 0, reuse: bool = False) -> tuple[list[int], list[list[int]]]:
    """Return (eval_ids, [train ids of iteration 1..T]) as indices into the pool.

    A seeded permutation; the first eval_size ids are held out, then consecutive disjoint
    slices of per_iteration. With reuse=True the training pool wraps around (a new pass is a
    new permutation) instead of failing when it runs out.
    """
    if eval_size >= num_prompts:
        raise PromptError(f"prompts.eval_size ({eval_size}) must be smaller than the pool ({num_prompts} prompts)")
    order = np.random.default_rng(seed).permutation(num_prompts).tolist()
    eval_ids, pool = order[:eval_size], order[eval_size:]
    needed = iterations * per_iteration
    if needed > len(pool) and not reuse:
        raise PromptError(f"prompts: {iterations} iterations x {per_iteration} per_iteration = {needed} prompts, "
                          f"but only {len(pool)} remain after the eval slice (lower prompts.per_iteration, "
                          f"or set prompts.reuse=true)")
    stream, rounds = list(pool), 1
    while len(stream) < needed:
        stream += np.random.default_rng(seed + rounds).permutation(pool).tolist()
        rounds += 1
    return eval_ids, [stream[t * per_iteration:(t + 1) * per_iteration] for t in range(iterations)]


def load_prompt_pool(recipe) -> tuple[list[str], list[dict] | None, list[int], list[list[int]]]:
    """A recipe's prompts, DRIFT records (pairs.type drift, else None), eval ids and per-iteration slices."""
    records = None
    if recipe.pairs.type == "drift":
        from selfplay.pairs.drift import load_dsat_records  # drift reads its records through this module

        records = load_dsat_records(recipe.prompts.path)
        prompts = [r["prompt"] for r in records]
    else:
        prompts = load_prompts(recipe.prompts.path, recipe.prompts.field)
    eval_ids, slices = split_prompts(len(prompts), recipe.iterations, recipe.prompts.per_iteration,
                                     recipe.prompts.eval_size, recipe.prompts.shuffle_seed, recipe.prompts.reuse)
    return prompts, records, eval_ids, slices

