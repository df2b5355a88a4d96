"""The pairs stage: apply the recipe's pair builder to every prompt's win matrix.

pairs.parquet: one row per pair with the prompt token ids and the chosen / rejected response
token ids exactly as sampled (no re-tokenization), their texts, and the builder's targets.
"""

from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selfplay.artifacts import chat_prompt_ids, group_by_prompt, response_token_ids, win_matrix_of
from selfplay.failures import DeadEnd
from selfplay.judging.win_matrix import aggregated_scores
from selfplay.pipeline import StageResult


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


@dataclass
class Pairs:
    """pairs.parquet from the iteration's samples and judgments, by the recipe's pair builder."""

    iteration: int
    name = "pairs"
    produces = ("pairs.parquet",)

    def inputs(self, ctx) -> dict:
        return {"samples": ctx.latest(self, "samples.parquet").digest,
                "judgments": ctx.latest(self, "judgments.parquet").digest}

    def config(self, ctx) -> dict:
        return ctx.recipe.pairs.model_dump()

    def run(self, ctx, tmp) -> StageResult:
        from selfplay.pairs import PAIR_BUILDERS

        table = build_pairs(ctx.latest(self, "samples.parquet").table(), ctx.latest(self, "judgments.parquet").table(),
                            PAIR_BUILDERS[ctx.recipe.pairs.type])
        if table.num_rows == 0:
            raise DeadEnd(f"no training pairs: the {ctx.recipe.annotate.type} judge tied every comparison of every "
                          f"prompt (see annotate's warning), so pairs.type {ctx.recipe.pairs.type!r} found no "
                          f"response better than another; use a judge whose scores differ between responses")
        pq.write_table(table, tmp / "pairs.parquet")
        metrics = {"pairs": table.num_rows}
        for column in ("chosen_win_rate", "rejected_win_rate"):  # SPPO: they approach 0.5 as self-play converges
            if column in table.column_names and table.num_rows:
                metrics[f"mean_{column}"] = sum(table.column(column).to_pylist()) / table.num_rows
        return StageResult(["pairs.parquet"], metrics)


@dataclass
class DriftPairs(Pairs):
    """DRIFT: (original request, fresh hindsight answer, real DSAT turn) per record; no judge."""

    def inputs(self, ctx) -> dict:
        return {"samples": ctx.latest(self, "samples.parquet").digest}

    def run(self, ctx, tmp) -> StageResult:
        from selfplay.pairs.drift import drift_pairs

        samples = ctx.latest(self, "samples.parquet").table().to_pylist()
        prompt_ids = {s["prompt_id"]: chat_prompt_ids(ctx.tokenizer, ctx.records[s["prompt_id"]]["prompt"])
                      for s in samples}
        rows = drift_pairs(ctx.records, samples, prompt_ids, partial(response_token_ids, ctx.tokenizer))
        pq.write_table(pa.Table.from_pylist(rows), tmp / "pairs.parquet")
        return StageResult(["pairs.parquet"], {"pairs": len(rows)})
