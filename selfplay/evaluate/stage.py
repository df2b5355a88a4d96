"""The evaluate stage: the policy an iteration trained against the initial and the previous one.

Every `evaluate.every` iterations (and at the last), the trained policy samples
`evaluate.samples_per_prompt` responses per eval prompt (eval-gen; the initial policy's once per
run, in iter-000/baseline), and for each opponent the judge sees all of a prompt's responses of
both policies together. The statistics are pure functions in small modules beside this one:
- head_to_head.py: win rate (comparisons won, ties half) and mean preference against another
  policy's samples, with a 95% bootstrap interval over prompts (bootstrap.py);
- agreement.py: how often two judges give the same verdict on the same comparisons (a separate
  `evaluate.judge` against the training judge);
- length_control.py: the win rate at zero length difference (AlpacaEval 2 LC style);
- kl.py / sequence_logps.py: KL(policy || initial) from the eval samples' log-probs;
- diversity.py: distinct-n within a prompt's samples;
and response_stats below (lengths, finished share, diversity). `judge_against_initial` keeps the
historical metric names (`judge_temperature`, `no_signal_fraction` without a suffix).
"""

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selfplay import runs
from selfplay.evaluate.agreement import judge_agreement
from selfplay.evaluate.diversity import mean_distinct_n
from selfplay.evaluate.head_to_head import HeadToHead, judge_against
from selfplay.evaluate.kl import kl_metrics
from selfplay.evaluate.length_control import length_controlled_win_rate_of
from selfplay.judging.calls import judge_config
from selfplay.pipeline import StageResult
from selfplay.stage_names import (
    BASELINE,
    COMPARISONS_PARQUET,
    EVAL_GEN,
    EVAL_PARQUET,
    EVALUATE,
    METRICS_JSON,
    PAIRS_PARQUET,
    SAMPLES_PARQUET,
)

log = logging.getLogger("selfplay")
LENGTH_QUANTILES = (10, 50, 90)
# SPPO's pairs metrics the evaluation repeats: they approach 0.5 as self-play converges.
PAIRS_METRICS = ("mean_chosen_win_rate", "mean_rejected_win_rate")


def response_stats(samples: pa.Table) -> dict:
    """Length (tokens: mean and LENGTH_QUANTILES percentiles), finished share, distinct texts,
    and distinct-2 / distinct-3 within each prompt's samples (diversity.py; left out when no
    sample is long enough to hold an n-gram)."""
    rows = samples.to_pylist()
    lengths = [len(r["token_ids"]) for r in rows]
    stats = {"mean_response_tokens": float(np.mean(lengths)),
             "finished_fraction": float(np.mean([r["finish_reason"] == "stop" for r in rows])),
             "distinct_responses": len({r["text"] for r in rows}) / max(1, len(rows))}
    for q, value in zip(LENGTH_QUANTILES, np.percentile(lengths, LENGTH_QUANTILES)):
        stats[f"response_tokens_p{q}"] = float(value)
    for n in (2, 3):
        distinct = mean_distinct_n(samples, n)
        if distinct is not None:
            stats[f"distinct_{n}"] = distinct
    return stats


def judge_against_initial(judge, policy_samples: pa.Table, initial_samples: pa.Table, rule: str, temperature,
                          desc: str = "evaluate") -> HeadToHead:
    """head_to_head.judge_against with name "vs_initial"; the judge's temperature and the
    no-signal share keep their historical unsuffixed names (`judge_temperature`,
    `no_signal_fraction`), as every run's metrics.jsonl has them."""
    result = judge_against(judge, policy_samples, initial_samples, rule, temperature,
                           name="vs_initial", opponent="initial", desc=desc)
    result.metrics["judge_temperature"] = result.metrics.pop("judge_temperature_vs_initial")
    result.metrics["no_signal_fraction"] = result.metrics.pop("no_signal_fraction_vs_initial")
    return result


@dataclass
class Evaluate:
    """The policy this iteration trained, on the eval prompts' samples (eval-gen), against the
    initial policy (iter-000/baseline) and the previous evaluated one: eval.parquet (per prompt,
    against the initial policy), comparisons.parquet (every comparison, tagged with its opponent
    and judge) and metrics.json.

    Metrics: `win_rate_vs_initial` / `_vs_previous` with bootstrap intervals, the length-
    controlled win rate, KL(policy || initial) (`evaluate.kl`), length and diversity stats,
    SPPO's mean chosen / rejected Phat of the iteration's pairs; with a separate `evaluate.judge`
    also the training judge's win rate against the initial policy and the two judges' agreement.
    """

    iteration: int
    name = EVALUATE
    produces = (EVAL_PARQUET, COMPARISONS_PARQUET, METRICS_JSON)

    def previous(self, ctx):
        """The eval samples of the last iteration before this one that has them (evaluate.every);
        None at the first evaluation, where the previous policy is the initial one."""
        earlier = ctx.earlier_iterations(self, SAMPLES_PARQUET, made_by=(EVAL_GEN,))
        return earlier[-1] if earlier else None

    def inputs(self, ctx) -> dict:
        """The samples it judges, the pairs whose PAIRS_METRICS it repeats, and with
        `evaluate.kl` the two policies."""
        pairs = ctx.latest(self, PAIRS_PARQUET)
        inputs = {"policy_samples": ctx.latest(self, SAMPLES_PARQUET).digest,
                  "initial_samples": ctx.artifact(0, BASELINE, SAMPLES_PARQUET).digest, "pairs": pairs.digest}
        previous = self.previous(ctx)
        if previous is not None:
            inputs["previous_samples"] = previous.digest
        if ctx.recipe.evaluate.kl:
            inputs.update(policy=ctx.policy("trained", self.iteration).digest, initial_policy=ctx.initial.digest)
        # committed before the pairs were an input: done while the metrics it copied are the same
        return ctx.inputs_as_committed(self, inputs, "pairs", lambda manifest: all(
            manifest["metrics"].get(key) == pairs.metrics.get(key) for key in PAIRS_METRICS))

    def config(self, ctx) -> dict:
        config = {**judge_config(self.judge_settings(ctx)), "kl": ctx.recipe.evaluate.kl}
        if ctx.recipe.evaluate.judge is not None:
            config["training_judge"] = judge_config(ctx.recipe.annotate)
        return config

    @staticmethod
    def judge_settings(ctx):
        """The evaluate section's own judge if it has one, else the run's."""
        return ctx.recipe.evaluate.judge or ctx.recipe.annotate

    def run(self, ctx, tmp) -> StageResult:
        samples = ctx.latest(self, SAMPLES_PARQUET).table()
        initial = ctx.artifact(0, BASELINE, SAMPLES_PARQUET).table()
        policy_path = str(ctx.policy("trained", self.iteration).path)
        settings = self.judge_settings(ctx)
        judge = ctx.actors.judge("annotate" if ctx.recipe.evaluate.judge is None else "evaluate", settings, policy_path)

        def versus(judge, settings, other, name, opponent):
            return judge_against(judge, samples, other, settings.win_matrix, settings.temperature, name=name,
                                 opponent=opponent, desc=f"iter {self.iteration} evaluate {name}")

        against_initial = judge_against_initial(judge, samples, initial, settings.win_matrix, settings.temperature,
                                                desc=f"iter {self.iteration} evaluate")
        metrics, warnings = dict(against_initial.metrics), list(against_initial.warnings)
        metrics["length_controlled_win_rate_vs_initial"] = length_controlled_win_rate_of(against_initial.comparisons)
        comparisons = [_tagged(against_initial.comparisons, "initial", "evaluation")]

        previous = self.previous(ctx)
        if previous is None:  # the first evaluation: the previous policy is the initial one
            metrics.update({key.replace("vs_initial", "vs_previous"): value for key, value in against_initial.metrics.items()
                            if key.startswith(("win_rate_vs_initial", "mean_preference_vs_initial"))})
        else:
            against_previous = versus(judge, settings, previous.table(), "vs_previous", "previous")
            metrics.update({k: v for k, v in against_previous.metrics.items() if k.startswith(("win_rate", "mean_pref"))})
            warnings += against_previous.warnings
            comparisons.append(_tagged(against_previous.comparisons, "previous", "evaluation"))

        if ctx.recipe.evaluate.judge is not None:  # does the policy also win by the judge it trains on?
            training_judge = ctx.actors.judge("annotate", ctx.recipe.annotate, policy_path)
            by_training_judge = versus(training_judge, ctx.recipe.annotate, initial, "vs_initial_training_judge", "initial")
            metrics.update({k: v for k, v in by_training_judge.metrics.items() if k.startswith("win_rate")})
            metrics["judge_agreement_vs_initial"] = judge_agreement(against_initial.comparisons.column("win").to_numpy(),
                                                                    by_training_judge.comparisons.column("win").to_numpy())
            comparisons.append(_tagged(by_training_judge.comparisons, "initial", "training"))

        if ctx.recipe.evaluate.kl:
            metrics.update(policy_kl(ctx, samples, policy_path))
        metrics.update(response_stats(samples))
        pairs = ctx.latest(self, PAIRS_PARQUET).metrics
        metrics.update({key: pairs[key] for key in PAIRS_METRICS if key in pairs})
        pq.write_table(against_initial.per_prompt, tmp / EVAL_PARQUET)
        pq.write_table(pa.concat_tables(comparisons), tmp / COMPARISONS_PARQUET)
        runs.write_json_atomic(tmp / METRICS_JSON, metrics)
        for warning in warnings:
            log.warning("iter %d %s", self.iteration, warning)
        return StageResult([EVAL_PARQUET, COMPARISONS_PARQUET, METRICS_JSON], metrics, {"warnings": warnings})


    def committed(self, ctx) -> None:
        """The W&B Table of example generations: the same first eval prompts every iteration."""
        from selfplay.track.examples import EXAMPLE_PROMPTS, example_rows

        if not ctx.tracker.wants_examples(self.iteration):
            return
        per_prompt = ctx.artifact(self.iteration, self.name, EVAL_PARQUET).table()
        scores = dict(zip(per_prompt["prompt_id"].to_pylist(), per_prompt["win_rate"].to_pylist()))
        ctx.tracker.log_examples(self.iteration, example_rows(ctx.latest(self, SAMPLES_PARQUET).table(),
                                                              ctx.eval_ids[:EXAMPLE_PROMPTS], scores))


def _tagged(comparisons: pa.Table, opponent: str, judge: str) -> pa.Table:
    rows = comparisons.num_rows
    return comparisons.append_column("opponent", pa.array([opponent] * rows)).append_column("judge", pa.array([judge] * rows))


def policy_kl(ctx, samples: pa.Table, policy_path: str) -> dict:
    """KL(policy || initial) from the eval samples (kl.py), scored in a Ray task on a GPU when the
    recipe trains on GPUs (a 7B pair of checkpoints does not belong in the driver), else here."""
    initial_path = str(ctx.initial.path)
    gpus = 1 if ctx.recipe.train.num_gpus_per_rank else 0
    if not gpus:
        return kl_metrics(samples, policy_path, initial_path)
    import ray

    ctx.actors.make_room("evaluate-kl", gpus)  # the engines give their GPU back only if none is free
    return ray.get(ray.remote(num_gpus=gpus, num_cpus=1)(kl_metrics).remote(samples, policy_path, initial_path))
