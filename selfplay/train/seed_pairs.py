"""Labelled seed pairs (DRIFT's curated DSAT->SAT pairs, Selfie's small labelled seed) for
the seed stage: plain DPO before iteration 1. JSONL with prompt, chosen, rejected strings.
"""

from selfplay.artifacts import response_token_ids
from selfplay.conversation import prompt_token_ids
from selfplay.prompts import read_jsonl_records

FIELDS = ("prompt", "chosen", "rejected")
# Labelled pairs carry no per-pair targets (win rates etc.): seed_training.loss must need none.
TARGET_COLUMNS = ()
# ...and only a chosen and a rejected response (no gold for TPO).
RESPONSES = ("chosen", "rejected")


def load_seed_pairs(path: str, tokenizer) -> list[dict]:
    return [{"prompt_id": index, "prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
             "prompt_token_ids": prompt_token_ids(tokenizer, row["prompt"]),
             "chosen_token_ids": response_token_ids(tokenizer, row["chosen"]),
             "rejected_token_ids": response_token_ids(tokenizer, row["rejected"])}
            for index, row in enumerate(read_jsonl_records(path, FIELDS, "a seed pair"))]

