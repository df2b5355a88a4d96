"""The generate stage: K samples per prompt from the current policy into samples.parquet.

One row per (prompt, sample): prompt_id, prompt text, chat-templated prompt token ids,
sample_idx, response text, token ids, per-token log-probs, finish reason, and the request
seed (a prompt's K samples come from one n=K request seeded by (run seed, iteration, prompt)).
"""

import zlib

import pyarrow as pa
import pyarrow.parquet as pq


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def request_seed(run_seed: int, iteration: int, prompt_id: int, purpose: str) -> int:
    return zlib.crc32(f"{run_seed}/{iteration}/{prompt_id}/{purpose}".encode()) & 0x7FFFFFFF


def generate_samples(pool, tokenizer, prompt_ids: list[int], prompts: list[str], *, n: int, temperature: float,
                     top_p: float, max_tokens: int, run_seed: int, iteration: int, purpose: str) -> pa.Table:
    token_ids = [chat_prompt_ids(tokenizer, prompts[i]) for i in prompt_ids]
    seeds = [request_seed(run_seed, iteration, i, purpose) for i in prompt_ids]
    results = pool.generate(token_ids, seeds, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    rows = []
    for prompt_id, ids, seed, samples in zip(prompt_ids, token_ids, seeds, results):
        for sample_idx, sample in enumerate(samples):
            rows.append({"prompt_id": prompt_id, "prompt": prompts[prompt_id], "prompt_token_ids": ids,
                         "sample_idx": sample_idx, "text": sample["text"], "token_ids": sample["token_ids"],
                         "logprobs": sample["logprobs"], "finish_reason": sample["finish_reason"], "seed": seed})
    return pa.Table.from_pylist(rows)


def write_table(table: pa.Table, path) -> None:
    pq.write_table(table, path)


def group_by_prompt(table: pa.Table) -> list[tuple[int, str, list[dict]]]:
    """(prompt_id, prompt, samples sorted by sample_idx) in first-seen prompt order."""
    groups: dict[int, list[dict]] = {}
    for row in table.to_pylist():
        groups.setdefault(row["prompt_id"], []).append(row)
    return [(pid, rows[0]["prompt"], sorted(rows, key=lambda r: r["sample_idx"])) for pid, rows in groups.items()]
