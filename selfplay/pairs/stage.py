"""The pairs stage: apply the recipe's pair rule (selfplay.methods.PAIR_RULES) to every prompt's
win matrix.

pairs.parquet: one row per pair with the prompt token ids and, for each response the rule names
(chosen, rejected, and e.g. TPO's gold), its sample index, its text and its token ids exactly as
sampled (no re-tokenization), then the rule's targets.
"""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selfplay.artifacts import group_by_prompt, win_matrix_of
from selfplay.failures import DeadEnd
from selfplay.judging.win_matrix import aggregated_scores
from selfplay.pipeline import StageResult
from selfplay.stage_names import JUDGMENTS_PARQUET, PAIRS, PAIRS_PARQUET, SAMPLES_PARQUET


def build_pairs(samples: pa.Table, judgments: pa.Table, rule) -> pa.Table:
    """Every prompt's pairs by `rule` (a PairRule with a builder)."""
    by_prompt = {pid: rows for pid, _, rows in group_by_prompt(samples)}
    pairs = []
    for judgment in judgments.to_pylist():
        rows = by_prompt[judgment["prompt_id"]]
        if judgment["scores"] is not None:
            scores = np.asarray(judgment["scores"])
        else:  # a pairwise judge: rank by llm-blender's scores, whatever the win-matrix rule
            k = judgment["num_samples"]
            scores = aggregated_scores(np.asarray(judgment["pairwise_logits"]).reshape(k, k))
        for pair in rule.build(win_matrix_of(judgment), scores):
            picked = {name: rows[pair[name]] for name in rule.responses}
            first = picked[rule.responses[0]]
            targets = {k: v for k, v in pair.items() if k not in rule.responses}
            pairs.append({"prompt_id": judgment["prompt_id"], "prompt": first["prompt"],
                          "prompt_token_ids": first["prompt_token_ids"],
                          **{f"{name}_idx": pair[name] for name in rule.responses},
                          **{name: row["text"] for name, row in picked.items()},
                          **{f"{name}_token_ids": row["token_ids"] for name, row in picked.items()},
                          **targets})
    return pa.Table.from_pylist(pairs)


@dataclass
class Pairs:
    """pairs.parquet from the iteration's samples and judgments, by the recipe's pair rule."""

    iteration: int
    name = PAIRS
    produces = (PAIRS_PARQUET,)

    def inputs(self, ctx) -> dict:
        return {"samples": ctx.latest(self, SAMPLES_PARQUET).digest,
                "judgments": ctx.latest(self, JUDGMENTS_PARQUET).digest}

    def config(self, ctx) -> dict:
        return ctx.recipe.pairs.model_dump()

    def run(self, ctx, tmp) -> StageResult:
        from selfplay.methods import PAIR_RULES

        table = build_pairs(ctx.latest(self, SAMPLES_PARQUET).table(), ctx.latest(self, JUDGMENTS_PARQUET).table(),
                            PAIR_RULES[ctx.recipe.pairs.type])
        if table.num_rows == 0:
            raise DeadEnd(f"no training pairs: the {ctx.recipe.annotate.type} judge tied every comparison of every "
                          f"prompt (see annotate's warning), so pairs.type {ctx.recipe.pairs.type!r} found no "
                          f"response better than another; use a judge whose scores differ between responses")
        pq.write_table(table, tmp / PAIRS_PARQUET)
        metrics = {"pairs": table.num_rows}
        for column in ("chosen_win_rate", "rejected_win_rate"):  # SPPO: they approach 0.5 as self-play converges
            if column in table.column_names and table.num_rows:
                metrics[f"mean_{column}"] = sum(table.column(column).to_pylist()) / table.num_rows
        return StageResult([PAIRS_PARQUET], metrics)

