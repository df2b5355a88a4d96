"""Labelled seed pairs (DRIFT's curated DSAT->SAT pairs, Selfie's small labelled seed) for
the seed stage: plain DPO before iteration 1. JSONL with prompt, chosen, rejected strings.
"""

from selfplay.prompts import read_jsonl_records

FIELDS = ("prompt", "chosen", "rejected")


def load_seed_pairs(path: str, tokenizer) -> list[dict]:
    from selfplay.generate.stage import chat_prompt_ids

    return [{"prompt_id": index, "prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
             "prompt_token_ids": chat_prompt_ids(tokenizer, row["prompt"]),
             "chosen_token_ids": response_token_ids(tokenizer, row["chosen"]),
             "rejected_token_ids": response_token_ids(tokenizer, row["rejected"])}
            for index, row in enumerate(read_jsonl_records(path, FIELDS, "a seed pair"))]


def response_token_ids(tokenizer, text: str) -> list[int]:
    """A response as the policy would have sampled it: its tokens then the end-of-turn token."""
    return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
