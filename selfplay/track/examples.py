"""The rows of W&B's `examples` Table: one generation per fixed eval prompt, each iteration.

The same prompts every iteration (the first EXAMPLE_PROMPTS eval prompt ids, which are fixed
for a run) and the same sample of each (sample_idx 0), so a user reads iteration t next to t+1
prompt by prompt. The score is the prompt's win rate against the initial policy when the
caller has it (the evaluate stage's eval.parquet).
"""

import pyarrow as pa

EXAMPLE_PROMPTS = 8


def example_rows(samples: pa.Table, prompt_ids: list[int], scores: dict | None = None) -> list[dict]:
    """{prompt_id, prompt, response, score} for each of `prompt_ids` (in that order) that has a
    sample in `samples` (an eval-gen samples.parquet); score is scores[prompt_id] or None."""
    first = {}
    for row in samples.select(["prompt_id", "prompt", "sample_idx", "text"]).to_pylist():
        if row["prompt_id"] not in first or row["sample_idx"] < first[row["prompt_id"]]["sample_idx"]:
            first[row["prompt_id"]] = row
    return [{"prompt_id": pid, "prompt": first[pid]["prompt"], "response": first[pid]["text"],
             "score": (scores or {}).get(pid)} for pid in prompt_ids if pid in first]
