"""A stage's reads of other stages' outputs are inputs of its manifest (issue 17): the evaluate
stage's copy of the pairs metrics and the train stage's count of earlier train steps. A change
of what they read changes their inputs (so the stage is redone); a stage committed before the
read was declared stays done while what it read is the same (a new version alone redoes no
finished run's training)."""

import json

from selfplay import runs
from selfplay.context import RunContext
from selfplay.evaluate.stage import Evaluate
from selfplay.recipe import load_recipe
from selfplay.stage_names import (
    BASELINE,
    EVAL_GEN,
    HISTORY_JSONL,
    METRICS_JSON,
    PAIRS,
    PAIRS_PARQUET,
    POLICY_FOLDER,
    SAMPLES_PARQUET,
    TRAIN,
)
from selfplay.train.stage import Train

from conftest import REPO


def make_ctx(tmp_path) -> RunContext:
    recipe = load_recipe(REPO / "recipes" / "quickstart-cpu.yaml", ["evaluate.kl=false"])
    return RunContext(run_dir=tmp_path, recipe=recipe)


def commit(ctx, iteration: int, stage: str, files: dict[str, str], metrics: dict | None = None, **manifest) -> None:
    """A committed stage holding `files` ({name: text}; a name ending in / is a folder)."""
    folder = runs.StageDir(ctx.run_dir, iteration, stage)
    tmp = folder.begin()
    for name, text in files.items():
        path = tmp / name.rstrip("/")
        if name.endswith("/"):
            path.mkdir()
            path = path / "weights"
        path.write_text(text)
    folder.commit([name.rstrip("/") for name in files], {"inputs": {}, "config_digest": "c", "metrics": metrics or {},
                                                        **manifest})


def commit_pairs(ctx, iteration: int, chosen_win_rate: float) -> None:
    commit(ctx, iteration, PAIRS, {PAIRS_PARQUET: f"pairs {chosen_win_rate}"},
           {"pairs": 4, "mean_chosen_win_rate": chosen_win_rate, "mean_rejected_win_rate": 0.25})


def commit_train(ctx, iteration: int, steps: int, **manifest) -> None:
    history = "".join(json.dumps({"loss": 1.0}) + "\n" for _ in range(steps))
    commit(ctx, iteration, TRAIN, {POLICY_FOLDER + "/": f"policy {iteration}", HISTORY_JSONL: history},
           {"steps": steps}, **manifest)


def test_the_pairs_whose_metrics_the_evaluation_repeats_are_its_input(tmp_path):
    ctx = make_ctx(tmp_path)
    commit(ctx, 0, BASELINE, {SAMPLES_PARQUET: "initial samples"})
    commit(ctx, 1, EVAL_GEN, {SAMPLES_PARQUET: "iteration 1 samples"})
    commit_pairs(ctx, 1, 0.7)
    stage = Evaluate(1)
    before = stage.inputs(ctx)
    assert before["pairs"] == ctx.artifact(1, PAIRS, PAIRS_PARQUET).digest
    commit_pairs(ctx, 1, 0.8)  # redone pairs, the samples unchanged: the evaluation is redone too
    assert stage.inputs(ctx)["pairs"] != before["pairs"]
    assert {k: v for k, v in stage.inputs(ctx).items() if k != "pairs"} == {k: v for k, v in before.items()
                                                                           if k != "pairs"}


def test_an_evaluation_committed_before_the_pairs_were_its_input_stays_done_while_they_are_the_same(tmp_path):
    ctx = make_ctx(tmp_path)
    commit(ctx, 0, BASELINE, {SAMPLES_PARQUET: "initial samples"})
    commit(ctx, 1, EVAL_GEN, {SAMPLES_PARQUET: "iteration 1 samples"})
    commit_pairs(ctx, 1, 0.7)
    stage = Evaluate(1)
    legacy = {k: v for k, v in stage.inputs(ctx).items() if k != "pairs"}   # as older versions recorded them
    config_digest = runs.digest_of(stage.config(ctx))
    commit(ctx, 1, stage.name, {METRICS_JSON: "{}"}, {"mean_chosen_win_rate": 0.7, "mean_rejected_win_rate": 0.25},
           inputs=legacy, config_digest=config_digest)
    assert stage.inputs(ctx) == legacy
    assert runs.StageDir(ctx.run_dir, 1, stage.name).is_done(stage.inputs(ctx), config_digest)
    commit_pairs(ctx, 1, 0.8)  # what the committed evaluation copied is no longer what the pairs say
    assert "pairs" in stage.inputs(ctx)
    assert not runs.StageDir(ctx.run_dir, 1, stage.name).is_done(stage.inputs(ctx), config_digest)


def train_inputs_ready(ctx) -> Train:
    """Iteration 2's train stage, with its policy, reference and pairs committed."""
    commit_train(ctx, 1, steps=3)
    commit_pairs(ctx, 2, 0.7)
    return Train(2, ctx.recipe.train)


def test_the_earlier_train_histories_that_place_its_steps_are_an_input_of_the_train_stage(tmp_path):
    ctx = make_ctx(tmp_path)
    stage = train_inputs_ready(ctx)
    before = stage.inputs(ctx)
    assert stage.earlier_steps(ctx) == 3
    assert before["earlier_histories"] == runs.digest_of([ctx.artifact(1, TRAIN, HISTORY_JSONL).digest])
    commit_train(ctx, 1, steps=5)  # iteration 1 trained again, for more steps
    assert stage.earlier_steps(ctx) == 5
    assert stage.inputs(ctx)["earlier_histories"] != before["earlier_histories"]


def test_a_train_stage_committed_before_the_histories_were_its_input_stays_done_while_its_steps_hold(tmp_path):
    ctx = make_ctx(tmp_path)
    stage = train_inputs_ready(ctx)
    legacy = {k: v for k, v in stage.inputs(ctx).items() if k != "earlier_histories"}
    config_digest = runs.digest_of(stage.config(ctx))
    commit(ctx, 2, TRAIN, {HISTORY_JSONL: ""}, {"steps": 0}, inputs=legacy, config_digest=config_digest,
           first_global_step=3)
    assert stage.inputs(ctx) == legacy
    earlier = runs.StageDir(ctx.run_dir, 1, TRAIN)
    runs.write_json_atomic(earlier.manifest_path, {**earlier.manifest(), "metrics": {"steps": 4}})
    assert "earlier_histories" in stage.inputs(ctx)  # the steps it counted are no longer the history's
