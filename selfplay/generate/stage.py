"""The generate stage: K samples per prompt from the current policy into samples.parquet.

One row per (prompt, sample): prompt_id, prompt text, chat-templated prompt token ids (as the
engine saw them), sample_idx, response text, token ids, per-token log-probs (None unless
`generate.store_logprobs`), finish reason, and the request seed (a prompt's K samples come from
one n=K request seeded by (run seed, iteration, prompt)).

Long prompts: a chat-templated prompt longer than `max_model_len - max_tokens` cannot be
sampled in full. `fit_prompt` applies the recipe's rule (`generate.long_prompts`): `truncate`
(the default) keeps its last tokens, the end of the user's text and the assistant header the
model answers after; `skip` leaves the prompt out (it then has no samples, so no judgments,
pairs or win rate). The stage reports the prompts it truncated or skipped.
"""

import zlib

import pyarrow as pa
import pyarrow.parquet as pq

SAMPLES_SCHEMA = pa.schema([("prompt_id", pa.int64()), ("prompt", pa.string()),
                            ("prompt_token_ids", pa.list_(pa.int64())), ("sample_idx", pa.int64()),
                            ("text", pa.string()), ("token_ids", pa.list_(pa.int64())),
                            ("logprobs", pa.list_(pa.float64())), ("finish_reason", pa.string()),
                            ("seed", pa.int64())])


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def request_seed(run_seed: int, iteration: int, prompt_id: int, purpose: str) -> int:
    return zlib.crc32(f"{run_seed}/{iteration}/{prompt_id}/{purpose}".encode()) & 0x7FFFFFFF


def prompt_budget(max_model_len: int, max_tokens: int) -> int:
    """Prompt tokens that leave room for max_tokens of response in the engine's context."""
    budget = max_model_len - max_tokens
    if budget < 1:
        raise ValueError(f"max_tokens ({max_tokens}) leaves no room for a prompt in generate.max_model_len "
                         f"({max_model_len})")
    return budget


def fit_prompt(ids: list[int], budget: int, rule: str) -> list[int] | None:
    """The prompt ids the engine gets: unchanged if they fit `budget`, else the last `budget`
    ids (rule "truncate") or None (rule "skip")."""
    if len(ids) <= budget:
        return ids
    if rule == "truncate":
        return ids[len(ids) - budget:]
    if rule == "skip":
        return None
    raise ValueError(f"generate.long_prompts must be 'truncate' or 'skip', got {rule!r}")


def generate_samples(pool, tokenizer, prompt_ids: list[int], prompts: list[str], *, n: int, temperature: float,
                     top_p: float, max_tokens: int, run_seed: int, iteration: int, purpose: str,
                     max_model_len: int, long_prompts: str = "truncate") -> tuple[pa.Table, dict]:
    """(samples table, report). The report names the prompts the long-prompt rule touched:
    {"rule", "budget", "truncated": [prompt ids], "skipped": [prompt ids]}."""
    budget = prompt_budget(max_model_len, max_tokens)
    report = {"rule": long_prompts, "budget": budget, "truncated": [], "skipped": []}
    kept, token_ids = [], []
    for prompt_id in prompt_ids:
        full = chat_prompt_ids(tokenizer, prompts[prompt_id])
        fitted = fit_prompt(full, budget, long_prompts)
        if fitted is None:
            report["skipped"].append(prompt_id)
            continue
        if len(fitted) < len(full):
            report["truncated"].append(prompt_id)
        kept.append(prompt_id)
        token_ids.append(fitted)
    if not kept:
        raise ValueError(f"all {len(prompt_ids)} prompts are longer than generate.max_model_len - max_tokens "
                         f"({budget} tokens) and generate.long_prompts is 'skip': raise generate.max_model_len "
                         f"or set generate.long_prompts=truncate")
    seeds = [request_seed(run_seed, iteration, i, purpose) for i in kept]
    results = pool.generate(token_ids, seeds, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    rows = []
    for prompt_id, ids, seed, samples in zip(kept, token_ids, seeds, results):
        for sample_idx, sample in enumerate(samples):
            rows.append({"prompt_id": prompt_id, "prompt": prompts[prompt_id], "prompt_token_ids": ids,
                         "sample_idx": sample_idx, "text": sample["text"], "token_ids": sample["token_ids"],
                         "logprobs": sample["logprobs"], "finish_reason": sample["finish_reason"], "seed": seed})
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), report


def write_table(table: pa.Table, path) -> None:
    pq.write_table(table, path)


def group_by_prompt(table: pa.Table) -> list[tuple[int, str, list[dict]]]:
    """(prompt_id, prompt, samples sorted by sample_idx) in first-seen prompt order. A prompt
    the long-prompt rule skipped has no samples, so it has no group."""
    groups: dict[int, list[dict]] = {}
    for row in table.to_pylist():
        groups.setdefault(row["prompt_id"], []).append(row)
    return [(pid, rows[0]["prompt"], sorted(rows, key=lambda r: r["sample_idx"])) for pid, rows in groups.items()]
