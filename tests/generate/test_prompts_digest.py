"""Issue 19 finding 1, without engines: a sampling stage's config holds a digest of the texts of
exactly its prompts, and a stage committed before that digest existed stays done while its
samples hold the texts sampled now (a format change alone redoes no finished run)."""

import pyarrow as pa
import pyarrow.parquet as pq

from selfplay import runs
from selfplay.context import RunContext
from selfplay.generate.stage import Sample
from selfplay.methods.drift import hindsight_generation
from selfplay.recipe import load_recipe

from conftest import REPO


def make_ctx(tmp_path) -> RunContext:
    recipe = load_recipe(REPO / "recipes" / "quickstart-cpu.yaml", [])
    return RunContext(run_dir=tmp_path, recipe=recipe, prompts=[f"prompt {i}" for i in range(6)], eval_ids=[0, 1],
                      slices=[[2, 3], [4, 5]])


def commit_samples(ctx, stage: Sample, config: dict) -> None:
    folder = runs.StageDir(ctx.run_dir, stage.iteration, stage.name)
    tmp = folder.begin()
    ids, prompts = stage.prompt_ids(ctx), stage.prompts(ctx)
    pq.write_table(pa.table({"prompt_id": ids, "prompt": [prompts[i] for i in ids]}), tmp / "samples.parquet")
    folder.commit(["samples.parquet"], {"inputs": {}, "config": config, "config_digest": runs.digest_of(config)})


def test_the_digest_covers_the_texts_of_the_stages_own_prompts_only(tmp_path):
    ctx = make_ctx(tmp_path)
    generate, baseline = Sample.generate(ctx.recipe, 1), Sample.baseline(ctx.recipe)
    before = generate.config(ctx)["prompts_digest"], baseline.config(ctx)["prompts_digest"]
    ctx.prompts[4] = "another iteration's prompt, edited"
    assert (generate.config(ctx)["prompts_digest"], baseline.config(ctx)["prompts_digest"]) == before
    ctx.prompts[3] = "this iteration's prompt, edited"
    assert generate.config(ctx)["prompts_digest"] != before[0]
    assert baseline.config(ctx)["prompts_digest"] == before[1]
    ctx.prompts[0] = "an eval prompt, edited"
    assert baseline.config(ctx)["prompts_digest"] != before[1]


def test_a_stage_committed_without_the_digest_stays_done_until_its_prompts_change(tmp_path):
    ctx = make_ctx(tmp_path)
    stage = Sample.generate(ctx.recipe, 1)
    old = {k: v for k, v in stage.config(ctx).items() if k != "prompts_digest"}  # as older versions recorded it
    commit_samples(ctx, stage, old)
    assert stage.config(ctx) == old
    ctx.prompts[2] = "edited in place"
    assert "prompts_digest" in stage.config(ctx)  # no longer the committed config: the stage is redone


def test_a_drift_stage_committed_with_the_all_records_digest_stays_done_until_a_record_changes(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.records = [{"prompt": f"p{i}", "dsat_response": "r", "feedback": "f"} for i in range(6)]
    stage = hindsight_generation(ctx.recipe, 1)
    old = {**stage.config(ctx), "prompts_digest": runs.digest_of(stage.prompts(ctx))}  # the earlier DRIFT format
    commit_samples(ctx, stage, old)
    assert stage.config(ctx) == old
    ctx.records[5]["feedback"] = "edited"   # not this iteration's record, but the old digest covered it
    assert stage.config(ctx) != old
