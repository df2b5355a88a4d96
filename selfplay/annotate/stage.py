"""The annotate stage: judge each prompt's K samples; keep the raw judgment and the win matrix.

judgments.parquet has one row per prompt: prompt_id, K, raw `scores` (K) or
`pairwise_logits` (K*K, row-major), the `temperature` that turned scores into P (null for a
pairwise judge), and the `win_matrix` (K*K) under the recipe's rule. The judges and the
machinery that calls them are in selfplay/judging/ (the evaluate stage uses them too).

With `annotate.shaping` (PAR, shaping.py) the judge also scores each prompt's reference
responses (iter-000/reference-samples, sampled once per run), and `scores` are the shaped
scores that pairs and SPPO see; the judge's `raw_scores` and its `reference_scores` are kept
beside them.
"""

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selfplay.annotate import shaping as shapings
from selfplay.artifacts import group_by_prompt
from selfplay.failures import DeadEnd
from selfplay.judging import win_matrix as wm
from selfplay.judging.base import Judgment
from selfplay.judging.calls import answer_counts, judge_config, judge_groups, signal_report, stage_temperature
from selfplay.pipeline import StageResult
from selfplay.stage_names import ANNOTATE, JUDGMENTS_PARQUET, REFERENCE_SAMPLES, SAMPLES_PARQUET

log = logging.getLogger("selfplay")


def judgments_table(groups, judgments: list[Judgment], rule: str, temperature,
                    shaped: "ShapedScores | None" = None) -> tuple[pa.Table, dict, list[str]]:
    """(judgments.parquet, the stage's metrics, its warnings); `temperature` is "auto" or a float;
    `shaped`: the raw and reference scores behind shaped `judgments`."""
    resolved = stage_temperature(temperature, judgments)
    rows, matrices = [], []
    for index, ((prompt_id, _, responses), judgment) in enumerate(zip(groups, judgments)):
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
        if shaped is not None:
            rows[-1].update(raw_scores=shaped.raw[index].tolist(), reference_scores=shaped.reference[index].tolist())
        if any(j.answers for j in judgments):  # an LLM judge: what it said, per response
            rows[-1].update(ratings=judgment.ratings, rationales=judgment.rationales)
    fraction, warnings = signal_report(judgments, matrices, "annotate")
    metrics = {"prompts": len(rows), "temperature": resolved, "no_signal_fraction": fraction, **answer_counts(judgments)}
    if shaped is not None:
        metrics.update(shaped.metrics(judgments))
    if resolved is not None:
        metrics["score_spread"] = wm.score_spread([j.scores for j in judgments if j.pairwise_logits is None])
    return pa.Table.from_pylist(rows), metrics, warnings


def check_missing(metrics: dict, config, what: str) -> None:
    """DeadEnd when more of a stage's judge answers stayed unusable than the judge allows."""
    limit = getattr(config, "max_missing_fraction", None)
    if limit is not None and metrics.get("judge_missing_fraction", 0.0) > limit:
        raise DeadEnd(f"{what}: {metrics['judge_missing']} of {metrics['judge_answers']} judge answers "
                      f"({metrics['judge_missing_fraction']:.1%}) stayed unusable after {config.retries} retries "
                      f"({metrics['judge_too_long']} longer than the judge's context), more than "
                      f"{what}.max_missing_fraction={limit:g}: raise {what}.max_model_len, or check the judge model")


@dataclass
class ShapedScores:
    """A stage's raw judge scores and its reference responses' scores (per prompt, length
    penalty not applied), behind the shaped scores."""

    raw: list[np.ndarray]
    reference: list[np.ndarray]

    def metrics(self, shaped: list[Judgment]) -> dict:
        def mean(groups):
            values = np.concatenate([np.asarray(g, float) for g in groups])
            return float(np.nanmean(values)) if np.isfinite(values).any() else None

        return {"mean_raw_score": mean(self.raw), "mean_reference_score": mean(self.reference),
                "mean_shaped_score": mean([j.scores for j in shaped]),
                "reference_responses": int(sum(len(r) for r in self.reference))}


def shape_judgments(judgments: list[Judgment], lengths: list[list[int]], reference: list[Judgment],
                    reference_lengths: list[list[int]], shaping) -> tuple[list[Judgment], ShapedScores]:
    """The judgments with shaped scores (annotate.shaping: kind, k, length penalty), and the raw ones."""
    shaped = []
    for judgment, k_lengths, ref, m_lengths in zip(judgments, lengths, reference, reference_lengths):
        scores, ref_scores = (shapings.length_penalized(s, n, shaping.length_penalty, shaping.length_penalty_after)
                              for s, n in ((judgment.scores, k_lengths), (ref.scores, m_lengths)))
        shaped.append(Judgment(scores=shapings.shape(shaping.type, scores, ref_scores, shaping.k)))
    return shaped, ShapedScores([np.asarray(j.scores, float) for j in judgments],
                                [np.asarray(r.scores, float) for r in reference])


def judge_inputs(grouped) -> tuple[list[tuple], list[tuple]]:
    """What judge_groups takes for [(prompt_id, prompt, sample rows)]: the (prompt_id, prompt,
    texts) groups and, per group, (prompt token ids, each response's token ids)."""
    groups = [(pid, prompt, [r["text"] for r in rows]) for pid, prompt, rows in grouped]
    token_ids = [(rows[0]["prompt_token_ids"], [r["token_ids"] for r in rows]) for _, _, rows in grouped]
    return groups, token_ids


def response_lengths(grouped) -> list[list[int]]:
    return [[len(r["token_ids"]) for r in rows] for _, _, rows in grouped]


def reference_groups(ctx, grouped) -> list[tuple]:
    """The reference responses (iter-000/reference-samples) of each prompt of `grouped`, grouped
    like it: [(prompt_id, prompt, rows)]."""
    by_prompt = {pid: (prompt, rows) for pid, prompt, rows in
                 group_by_prompt(ctx.artifact(0, REFERENCE_SAMPLES, SAMPLES_PARQUET).table())}
    missing = [pid for pid, _, _ in grouped if pid not in by_prompt]
    if missing:
        raise RuntimeError(f"iter-000/{REFERENCE_SAMPLES} has no reference responses for prompt ids {missing[:10]}")
    return [(pid, *by_prompt[pid]) for pid, _, _ in grouped]


@dataclass
class Annotate:
    """judgments.parquet of the iteration's samples, by the recipe's judge (`annotate`)."""

    iteration: int
    name = ANNOTATE
    produces = (JUDGMENTS_PARQUET,)

    def inputs(self, ctx) -> dict:
        inputs = {"samples": ctx.latest(self, SAMPLES_PARQUET).digest}
        if ctx.recipe.annotate.shaping is not None:  # PAR scores against the initial policy's responses
            inputs["reference_samples"] = ctx.artifact(0, REFERENCE_SAMPLES, SAMPLES_PARQUET).digest
        if ctx.recipe.annotate.judges_with_policy:  # the judge is the policy itself (Selfie)
            inputs["policy"] = ctx.policy("entering", self.iteration).digest
        return inputs

    def config(self, ctx) -> dict:
        return judge_config(ctx.recipe.annotate)

    def run(self, ctx, tmp) -> StageResult:
        config = ctx.recipe.annotate
        grouped = group_by_prompt(ctx.latest(self, SAMPLES_PARQUET).table())
        groups, token_ids = judge_inputs(grouped)
        judge = ctx.actors.judge("annotate", config, str(ctx.policy("entering", self.iteration).path))
        judgments = judge_groups(judge, groups, desc=f"iter {self.iteration} annotate", token_ids=token_ids)
        shaped = None
        if config.shaping is not None:
            references = reference_groups(ctx, grouped)
            reference_texts, reference_ids = judge_inputs(references)
            reference = judge_groups(judge, reference_texts, desc=f"iter {self.iteration} annotate references",
                                     token_ids=reference_ids)
            judgments, shaped = shape_judgments(judgments, response_lengths(grouped), reference,
                                                response_lengths(references), config.shaping)
        table, metrics, warnings = judgments_table(groups, judgments, config.win_matrix, config.temperature, shaped)
        check_missing(metrics, config, "annotate")
        pq.write_table(table, tmp / JUDGMENTS_PARQUET)
        for warning in warnings:
            log.warning("iter %d %s", self.iteration, warning)
        return StageResult([JUDGMENTS_PARQUET], metrics, {"warnings": warnings})
