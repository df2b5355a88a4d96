"""The pairs stage: apply the recipe's pair builder to every prompt's win matrix.

pairs.parquet: one row per pair with the prompt token ids and the chosen / rejected response
token ids exactly as sampled (no re-tokenization), their texts, and the builder's targets.
"""

import numpy as np
import pyarrow as pa

from selfplay.annotate.stage import win_matrix_of
from selfplay.annotate.win_matrix import aggregated_scores
from selfplay.generate.stage import group_by_prompt


def build_pairs(samples: pa.Table, judgments: pa.Table, builder) -> pa.Table:
    by_prompt = {pid: rows for pid, _, rows in group_by_prompt(samples)}
    pairs = []
    for judgment in judgments.to_pylist():
        rows = by_prompt[judgment["prompt_id"]]
        if judgment["scores"] is not None:
            scores = np.asarray(judgment["scores"])
        else:  # a pairwise judge: rank by llm-blender's scores, whatever the win-matrix rule
            k = judgment["num_samples"]
            scores = aggregated_scores(np.asarray(judgment["pairwise_logits"]).reshape(k, k))
        for pair in builder(win_matrix_of(judgment), scores):
            chosen, rejected = rows[pair["chosen"]], rows[pair["rejected"]]
            targets = {k: v for k, v in pair.items() if k not in ("chosen", "rejected")}
            pairs.append({"prompt_id": judgment["prompt_id"], "prompt": chosen["prompt"],
                          "prompt_token_ids": chosen["prompt_token_ids"],
                          "chosen_idx": pair["chosen"], "rejected_idx": pair["rejected"],
                          "chosen": chosen["text"], "rejected": rejected["text"],
                          "chosen_token_ids": chosen["token_ids"], "rejected_token_ids": rejected["token_ids"],
                          **targets})
    return pa.Table.from_pylist(pairs)
