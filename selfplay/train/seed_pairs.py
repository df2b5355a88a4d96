"""Labelled seed pairs (DRIFT's curated DSAT->SAT pairs, Selfie's small labelled seed) for
the seed stage: plain DPO before iteration 1. JSONL with prompt, chosen, rejected strings.
"""

import json
from pathlib import Path

from selfplay.prompts import PromptError

FIELDS = ("prompt", "chosen", "rejected")


def load_seed_pairs(path: str, tokenizer) -> list[dict]:
    from selfplay.generate.stage import chat_prompt_ids

    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        missing = [f for f in FIELDS if not isinstance(row.get(f), str) or not row[f].strip()]
        if missing:
            raise PromptError(f"{path}:{number}: a seed pair needs non-empty strings {', '.join(FIELDS)}; "
                             f"missing or empty: {', '.join(missing)}")
        rows.append({"prompt_id": number - 1, "prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                     "prompt_token_ids": chat_prompt_ids(tokenizer, row["prompt"]),
                     "chosen_token_ids": response_token_ids(tokenizer, row["chosen"]),
                     "rejected_token_ids": response_token_ids(tokenizer, row["rejected"])})
    if not rows:
        raise PromptError(f"{path}: no seed pairs")
    return rows


def response_token_ids(tokenizer, text: str) -> list[int]:
    """A response as the policy would have sampled it: its tokens then the end-of-turn token."""
    return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
