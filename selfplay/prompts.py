"""Prompt pools and their deterministic split into a held-out eval slice and disjoint
per-iteration slices (SPPO trains on new prompts each iteration).

Sources: JSONL (one object per line), Parquet, or a local HF `datasets` folder
(`save_to_disk`). Every prompt gets a stable `prompt_id` (its row index in the source). A prompt
is a string (`prompts.field`) or a conversation (`prompts.messages_field`: a list of {role,
content} messages ending with a user turn; selfplay/conversation.py), with `prompts.system`
added or put in place of its own.

With `prompts.source: magpie` the file gives only the eval slice; each iteration's training
prompts are written by a model (selfplay/magpie/stage.py) and read from its artifact.

Duplicates: prompts with the same text up to Unicode normalization, case and whitespace are
one prompt (conversations: every turn's text, and its role). Only the first row of each is ever
selected (later copies keep their row index but are never drawn), so the eval slice shares no
prompt with any training slice. A file without duplicates splits exactly as before duplicates
were looked for.

A file that cannot be read (not UTF-8, not Parquet, not a datasets folder, a non-string
prompt, a conversation with a bad role, order or empty turn) is a PromptError naming the file and
the line or row: the CLI's one-line exit 2.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfplay.conversation import Prompt, conversation_problem, duplicate_key, with_system


class PromptError(ValueError):
    pass


def _unreadable(source: Path, what: str, error: Exception) -> PromptError:
    detail = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return PromptError(f"{source}: {what} ({type(error).__name__}: {detail[:200]})")


def _missing_column(source: Path, setting: str, field: str, columns: list[str]) -> PromptError:
    hint = ("; set prompts.messages_field=messages to read its conversations"
            if setting == "prompts.field" and "messages" in columns else "")
    return PromptError(f"{setting}: column {field!r} not in {source} (columns: {', '.join(columns)}){hint}")


def _dataset_column(source: Path, field: str, setting: str) -> list:
    import datasets

    try:
        rows = datasets.load_from_disk(str(source))
        if isinstance(rows, datasets.DatasetDict):
            if not rows:
                raise PromptError(f"{source}: the DatasetDict has no splits")
            rows = rows[next(iter(rows))]
        if field not in rows.column_names:
            raise _missing_column(source, setting, field, rows.column_names)
        return list(rows[field])
    except PromptError:
        raise
    except Exception as error:  # a folder of something else, or damaged arrow files: the user's input
        raise _unreadable(source, "not a readable datasets folder (one written by Dataset.save_to_disk)",
                          error) from None


def _parquet_column(source: Path, field: str, setting: str) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(source).names
        if field not in columns:
            raise _missing_column(source, setting, field, columns)
        return pq.read_table(source, columns=[field]).column(field).to_pylist()
    except PromptError:
        raise
    except (pa.ArrowException, OSError, ValueError) as error:  # truncated, not Parquet, unreadable
        raise _unreadable(source, "not a readable Parquet file", error) from None


def load_prompts(path: str, field: str = "prompt", messages_field: str | None = None) -> list[Prompt]:
    """The prompts of a file in row order: strings from column `field`, or, with
    `messages_field`, conversations (checked: roles, order, no empty turn, a user turn last)."""
    source = Path(path)
    column, setting = (field, "prompts.field") if messages_field is None else (messages_field, "prompts.messages_field")
    if source.is_dir():
        values = _dataset_column(source, column, setting)
    elif source.suffix == ".parquet":
        values = _parquet_column(source, column, setting)
    elif source.suffix in (".jsonl", ".json"):
        if messages_field is None:
            values = [row[field] for row in read_jsonl_records(source, (field,), "a prompt (set prompts.field)")]
        else:
            return [read_conversation(row.get(column), f"{source}:{number}", column)
                    for number, row in jsonl_rows(source)]
    else:
        raise PromptError(f"prompts.path: {source} must be .jsonl, .parquet or a datasets folder")
    if messages_field is not None:
        return [read_conversation(value, str(source), column, index) for index, value in enumerate(values)]
    for index, prompt in enumerate(values):
        if not isinstance(prompt, str) or not prompt.strip():
            got = "an empty string" if isinstance(prompt, str) else f"{type(prompt).__name__} {str(prompt)[:40]!r}"
            raise PromptError(f"{source}: row {index} of column {field!r}: a prompt must be a non-empty string, "
                              f"got {got}")
    return values


def read_conversation(value, where: str, column: str, row: int | None = None) -> list[dict]:
    """A source's conversation, role and content kept; else a PromptError naming the file's line
    (`where` "file:line") or its `row`, and the problem."""
    if value is None and row is None:
        raise PromptError(f"{where}: no {column!r} (set prompts.messages_field to the column of the conversations)")
    problem = conversation_problem(value)
    if problem:
        place = f"{where}: column {column!r}" if row is None else f"{where}: row {row} of column {column!r}"
        raise PromptError(f"{place}: {problem}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def read_text(path: Path) -> str:
    """A UTF-8 file's text; a bad byte is named by line and column."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise PromptError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")  # the byte-order mark some editors write
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - raw.rfind(b"\n", 0, error.start)
        raise PromptError(f"{path}:{line}: not UTF-8 (byte 0x{raw[error.start]:02x} at column {column}); "
                          f"save the file as UTF-8") from None


def jsonl_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line; a line that is not a JSON object is named."""
    rows = []
    # split on "\n" only: str.splitlines would also cut at U+2028 and friends, which JSON strings may hold
    for number, line in enumerate(read_text(Path(path)).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise PromptError(f"{path}:{number}: a record is a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    if not rows:
        raise PromptError(f"{path}: no records")
    return rows


def missing_strings(row: dict, fields) -> list[str]:
    return [f for f in fields if not isinstance(row.get(f), str) or not row[f].strip()]


def read_jsonl_records(path: str | Path, fields: tuple[str, ...], what: str) -> list[dict]:
    """JSONL rows, each required to hold non-empty strings in `fields`; errors name file:line."""
    rows = []
    for number, row in jsonl_rows(path):
        missing = missing_strings(row, fields)
        if missing:
            raise PromptError(f"{path}:{number}: {what} needs non-empty string fields {', '.join(fields)}; "
                              f"missing or empty: {', '.join(missing)}")
        rows.append(row)
    return rows


def distinct_ids(prompts: list[Prompt]) -> list[int]:
    """Row indices of each prompt's first occurrence by normalized turns, in row order."""
    seen, ids = set(), []
    for index, prompt in enumerate(prompts):
        key = duplicate_key(prompt)
        if key not in seen:
            seen.add(key)
            ids.append(index)
    return ids


class TrainSlices(Sequence):
    """The training prompt ids of iterations 1..T, computed when asked for.

    The stream is the pool in its shuffled order, then (prompts.reuse) a new permutation of the
    pool per pass; iteration t takes the stream's t-th run of per_iteration ids. One slice costs
    O(per_iteration + pool) whatever T is, so a recipe with a huge iteration count validates
    in bounded time and memory.
    """

    def __init__(self, pool: list[int], iterations: int, per_iteration: int, seed: int):
        self.pool, self.iterations, self.per_iteration, self.seed = pool, iterations, per_iteration, seed
        self._passes: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.iterations

    def __getitem__(self, t):
        if isinstance(t, slice):
            return [self[i] for i in range(*t.indices(len(self)))]
        t = t + self.iterations if t < 0 else t
        if not 0 <= t < self.iterations:
            raise IndexError(f"iteration index {t} out of range (0..{self.iterations - 1})")
        size = len(self.pool)
        ids, position, stop = [], t * self.per_iteration, (t + 1) * self.per_iteration
        while position < stop:
            number, offset = divmod(position, size)
            take = min(stop - position, size - offset)
            ids += self._pass(number)[offset:offset + take]
            position += take
        return ids

    def _pass(self, number: int) -> list[int]:
        if number == 0:
            return self.pool
        if number not in self._passes:
            if len(self._passes) > 2:  # a slice walks passes in order: a few in memory suffice
                self._passes.clear()
            self._passes[number] = np.random.default_rng(self.seed + number).permutation(self.pool).tolist()
        return self._passes[number]


def split_prompts(prompt_ids: int | list[int], iterations: int, per_iteration: int, eval_size: int,
                  seed: int = 0, reuse: bool = False, duplicates: int = 0) -> tuple[list[int], TrainSlices]:
    """Return (eval_ids, training slices of iteration 1..T) as indices into the source.

    `prompt_ids`: the selectable row ids (distinct prompts), or a count meaning range(count).
    A seeded permutation; the first eval_size ids are held out, then consecutive disjoint
    slices of per_iteration. With reuse=True the training pool wraps around (a new pass is a
    new permutation) instead of failing when it runs out.
    """
    ids = list(range(prompt_ids)) if isinstance(prompt_ids, int) else list(prompt_ids)
    dropped = f" ({duplicates} duplicate prompts dropped)" if duplicates else ""
    if eval_size >= len(ids):
        raise PromptError(f"prompts.eval_size ({eval_size}) must be smaller than the pool ({len(ids)} prompts"
                          f"{dropped})")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids)).tolist()]
    eval_ids, pool = order[:eval_size], order[eval_size:]
    needed = iterations * per_iteration
    if needed > len(pool) and not reuse:
        raise PromptError(f"prompts: {iterations} iterations x {per_iteration} per_iteration = {needed} prompts, "
                          f"but only {len(pool)} remain after the eval slice{dropped} (lower prompts.per_iteration, "
                          f"or set prompts.reuse=true)")
    return eval_ids, TrainSlices(pool, iterations, per_iteration, seed)


@dataclass
class PromptPool:
    """A recipe's prompts (row order of the source), the records they came from when the pair rule
    reads records (DRIFT's DSAT records, PairRule.records; else None),
    eval ids, per-iteration training slices and the number of duplicate rows never selected."""
    prompts: list[Prompt]
    records: list[dict] | None
    eval_ids: list[int]
    slices: TrainSlices
    duplicates: int


def load_prompt_pool(recipe) -> PromptPool:
    from selfplay.methods import PAIR_RULES

    settings = recipe.prompts
    records, read_records = None, PAIR_RULES[recipe.pairs.type].records
    if read_records is not None:
        records = read_records(settings.path)
        prompts = [r["prompt"] for r in records]
    else:
        prompts = load_prompts(settings.path, settings.field, settings.messages_field)
    prompts = [with_system(prompt, settings.system, settings.system_mode) for prompt in prompts]
    ids = distinct_ids(prompts)
    # Magpie writes the training prompts (selfplay/magpie): the file gives the held-out eval set only
    iterations = 0 if recipe.prompts.source == "magpie" else recipe.iterations
    eval_ids, slices = split_prompts(ids, iterations, recipe.prompts.per_iteration, recipe.prompts.eval_size,
                                     recipe.prompts.shuffle_seed, recipe.prompts.reuse, len(prompts) - len(ids))
    return PromptPool(prompts, records, eval_ids, slices, len(prompts) - len(ids))
