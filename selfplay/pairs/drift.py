"""DRIFT (cacayaya/DRIFT): pairs anchored on real dissatisfaction (DSAT) records.

A record is the user's request, the assistant turn the user disliked, and the user's
complaint: {"prompt": ..., "dsat_response": ..., "feedback": ...} in JSONL. Each iteration the
current policy writes ONE fresh answer per record from a hindsight prompt that shows it the
request, its bad answer and the complaint; the pair trains on the original request:
chosen = the fresh answer, rejected = the real DSAT turn. No judge or filter (as the
released code). Only single-turn requests are supported so far. The records and the hindsight
prompt are read by selfplay.prompts (they are DRIFT's prompt pool).
"""

# No per-pair targets: a DRIFT pair is (request, fresh answer, DSAT turn) and nothing more.
TARGET_COLUMNS = ()


def drift_pairs(records: list[dict], samples: list[dict], prompt_token_ids: dict[int, list[int]],
                text_token_ids) -> list[dict]:
    """One pair per sampled record: (original request, fresh answer, real DSAT turn).

    samples: rows of samples.parquet (one per record, prompt_id = record index);
    prompt_token_ids: chat-templated ids of each record's ORIGINAL request;
    text_token_ids: fn(text) -> response token ids (with the end-of-turn token).
    """
    pairs = []
    for sample in samples:
        record = records[sample["prompt_id"]]
        pairs.append({"prompt_id": sample["prompt_id"], "prompt": record["prompt"],
                      "prompt_token_ids": prompt_token_ids[sample["prompt_id"]],
                      "chosen": sample["text"], "rejected": record["dsat_response"],
                      "chosen_token_ids": sample["token_ids"],
                      "rejected_token_ids": text_token_ids(record["dsat_response"])})
    return pairs
