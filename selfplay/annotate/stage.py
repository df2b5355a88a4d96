"""The annotate stage: judge each prompt's K samples; keep the raw judgment and the win matrix.

judgments.parquet has one row per prompt: prompt_id, K, raw `scores` (K) or
`pairwise_logits` (K*K, row-major), the `temperature` that turned scores into P (null for a
pairwise judge), and the `win_matrix` (K*K) under the recipe's rule. The judges and the
machinery that calls them are in selfplay/judging/ (the evaluate stage uses them too).
"""

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selfplay.artifacts import group_by_prompt
from selfplay.judging import win_matrix as wm
from selfplay.judging.base import Judgment
from selfplay.judging.calls import judge_config, judge_groups, signal_report, stage_temperature
from selfplay.pipeline import StageResult
from selfplay.stage_names import ANNOTATE, JUDGMENTS_PARQUET, SAMPLES_PARQUET

log = logging.getLogger("selfplay")


def judgments_table(groups, judgments: list[Judgment], rule: str, temperature) -> tuple[pa.Table, dict, list[str]]:
    """(judgments.parquet, the stage's metrics, its warnings); `temperature` is "auto" or a float."""
    resolved = stage_temperature(temperature, judgments)
    rows, matrices = [], []
    for (prompt_id, _, responses), judgment in zip(groups, judgments):
        k = len(responses)
        matrix = judgment.win_matrix(rule, resolved or 1.0)
        if matrix.shape != (k, k):
            raise ValueError(f"judge returned a {matrix.shape} matrix for {k} responses of prompt {prompt_id}")
        matrices.append(matrix)
        scalar = judgment.pairwise_logits is None
        rows.append({"prompt_id": prompt_id, "num_samples": k,
                     "scores": judgment.filled_scores(resolved).tolist() if scalar else None,
                     "pairwise_logits": None if scalar else np.asarray(judgment.pairwise_logits, float).ravel().tolist(),
                     "temperature": resolved if scalar else None,
                     "win_matrix": matrix.ravel().tolist()})
    fraction, warnings = signal_report(judgments, matrices, "annotate")
    metrics = {"prompts": len(rows), "temperature": resolved, "no_signal_fraction": fraction}
    if resolved is not None:
        metrics["score_spread"] = wm.score_spread([j.scores for j in judgments if j.pairwise_logits is None])
    return pa.Table.from_pylist(rows), metrics, warnings


@dataclass
class Annotate:
    """judgments.parquet of the iteration's samples, by the recipe's judge (`annotate`)."""

    iteration: int
    name = ANNOTATE
    produces = (JUDGMENTS_PARQUET,)

    def inputs(self, ctx) -> dict:
        inputs = {"samples": ctx.latest(self, SAMPLES_PARQUET).digest}
        if ctx.recipe.annotate.judges_with_policy:  # the judge is the policy itself (Selfie)
            inputs["policy"] = ctx.policy("entering", self.iteration).digest
        return inputs

    def config(self, ctx) -> dict:
        return judge_config(ctx.recipe.annotate)

    def run(self, ctx, tmp) -> StageResult:
        config = ctx.recipe.annotate
        grouped = group_by_prompt(ctx.latest(self, SAMPLES_PARQUET).table())
        groups = [(pid, prompt, [r["text"] for r in rows]) for pid, prompt, rows in grouped]
        token_ids = [(rows[0]["prompt_token_ids"], [r["token_ids"] for r in rows]) for _, _, rows in grouped]
        judge = ctx.actors.judge("annotate", config, str(ctx.policy("entering", self.iteration).path))
        judgments = judge_groups(judge, groups, desc=f"iter {self.iteration} annotate", token_ids=token_ids)
        table, metrics, warnings = judgments_table(groups, judgments, config.win_matrix, config.temperature)
        pq.write_table(table, tmp / JUDGMENTS_PARQUET)
        for warning in warnings:
            log.warning("iter %d %s", self.iteration, warning)
        return StageResult([JUDGMENTS_PARQUET], metrics, {"warnings": warnings})
