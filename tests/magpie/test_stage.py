"""The magpie stage without engines: a fake engine pool writes fixed texts; the stage commits the
kept ones as prompts.parquet with every drop counted, generate reads them through `ctx.latest`,
and a later iteration drops what an earlier one kept."""

from pathlib import Path

import pytest
from stage_helpers import RecordingTracker

from selfplay import pipeline
from selfplay.artifacts import Artifact
from selfplay.context import RunContext
from selfplay.failures import DeadEnd
from selfplay.generate.stage import Sample
from selfplay.magpie.stage import MagpiePrompts
from selfplay.recipe import load_recipe
from selfplay.sampling import request_seed
from selfplay.stage_names import MAGPIE, PROMPTS_PARQUET

from conftest import REPO

TEXTS = [" Write a poem about the sea. ", "List the steps:", "What is the capital of France?", "",
         "Write a poem about the seas.", "Explain how tides work.", "Name three rivers in Europe."]


class FakePool:
    def __init__(self):
        self.calls = []

    def generate(self, prompt_token_ids, seeds, **sampling):
        self.calls.append((prompt_token_ids, seeds, sampling))
        return [[{"text": TEXTS[i % len(TEXTS)], "token_ids": [], "logprobs": None, "finish_reason": "stop"}]
                for i in range(len(seeds))]


class FakeActors:
    def __init__(self):
        self.pool, self.loaded = FakePool(), []

    def engines(self, path):
        self.loaded.append(path)
        return self.pool

    def drop_engines(self):
        self.loaded.append("dropped")

    def placement(self):
        return {}


@pytest.fixture
def ctx(tmp_path, tiny_policy):
    from transformers import AutoTokenizer

    recipe = load_recipe(REPO / "recipes" / "quickstart-cpu.yaml",
                         ["prompts.source=magpie", "prompts.per_iteration=3", "prompts.magpie.candidates=7",
                          "prompts.magpie.min_chars=10", "seed=5"])
    context = RunContext(run_dir=tmp_path, recipe=recipe, tracker=RecordingTracker(), actors=FakeActors(),
                         tokenizer=AutoTokenizer.from_pretrained(tiny_policy),
                         prompts=["what is the capital of  FRANCE?", "an eval prompt", "a training prompt"],
                         eval_ids=[0, 1])
    context.initial = Artifact(Path(tiny_policy), "initial-digest")
    return context


def test_the_kept_instructions_are_the_iterations_prompts(ctx):
    stage = MagpiePrompts(1)
    assert [s.name for s in pipeline.stages(ctx.recipe, 1)][:2] == [MAGPIE, "generate"]
    manifest = pipeline.run_stage(ctx, stage)
    rows = ctx.artifact(1, MAGPIE, PROMPTS_PARQUET).table().to_pylist()
    # 7 candidates: the poem, the tides and the rivers pass; per_iteration 3 keeps all three
    assert [r["prompt"] for r in rows] == ["Write a poem about the sea.", "Explain how tides work.",
                                           "Name three rivers in Europe."]
    assert [r["candidate_idx"] for r in rows] == [0, 5, 6] and [r["prompt_id"] for r in rows] == [0, 1, 2]
    assert [r["seed"] for r in rows] == [request_seed(5, 1, i, "magpie") for i in (0, 5, 6)]
    metrics = manifest["metrics"]
    assert (metrics["candidates"], metrics["kept"], metrics["dropped_ends_with_colon"], metrics["dropped_eval_prompt"],
            metrics["dropped_empty"], metrics["dropped_near_duplicate"]) == (7, 3, 1, 1, 1, 1)
    assert manifest["pre_query_template"] == "<|user|>\n"
    ids, seeds, sampling = ctx.actors.pool.calls[0]
    assert ids == [ctx.tokenizer("<|user|>\n", add_special_tokens=False).input_ids] * 7
    assert sampling["temperature"] == 1.0 and sampling["top_p"] == 1.0
    assert sampling["stop_token_ids"] == [ctx.tokenizer.convert_tokens_to_ids("<|end|>")]
    assert ctx.actors.loaded == [str(ctx.initial.path)]  # the current policy writes, in the shared pool
    # generate samples exactly these prompts, and their digest is its input
    generate = Sample.generate(ctx.recipe, 1)
    assert generate.prompts(ctx) == [r["prompt"] for r in rows] and generate.prompt_ids(ctx) == [0, 1, 2]
    assert generate.inputs(ctx)["prompts"] == ctx.artifact(1, MAGPIE, PROMPTS_PARQUET).digest
    # run again: done, skipped
    assert pipeline.run_stage(ctx, stage)["started_at"] == manifest["started_at"]
    assert len(ctx.actors.pool.calls) == 1


def test_a_later_iteration_drops_what_an_earlier_one_kept(ctx, monkeypatch):
    pipeline.run_stage(ctx, MagpiePrompts(1))
    monkeypatch.setattr(ctx, "policy", lambda source, iteration: ctx.initial)  # no train stage in this test
    later = MagpiePrompts(2)
    assert later.inputs(ctx)["earlier_prompts"] != MagpiePrompts(1).inputs(ctx)["earlier_prompts"]
    with pytest.raises(DeadEnd, match="near_duplicate_earlier 4"):
        pipeline.run_stage(ctx, later)


def test_a_named_writer_gets_an_engine_pool_of_its_own(ctx, tiny_policy):
    ctx.recipe.prompts.magpie.model = str(tiny_policy)
    pipeline.run_stage(ctx, MagpiePrompts(1))
    assert ctx.actors.loaded == ["dropped", str(Path(tiny_policy).resolve()), "dropped"]
