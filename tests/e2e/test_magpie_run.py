"""Magpie prompts through the real pipeline (vLLM CPU, DeepSpeed gloo, Ray), via the `selfplay`
command: recipes/magpie-cpu.yaml, the tiny policy writing each iteration's prompts.

One module-scoped pair of runs with the same seed: an unbroken one, and one SIGKILLed (the
driver's whole session, fault_runs.kill_when) while iteration 2's magpie stage runs, then
resumed. Their prompts.parquet are the same in every iteration (determinism under a seed, and
survival of kill and resume), no kept prompt equals an eval prompt, and generate sampled exactly
the kept prompts. A third, one-iteration run has another model write the prompts
(`prompts.magpie.model: tiny:qwen2`, another architecture than the policy's), in an engine pool
of its own."""

import json

import pyarrow.parquet as pq
import pytest

from selfplay.conversation import normalized
from selfplay.prompts import load_prompt_pool
from selfplay.recipe import load_recipe

from conftest import REPO
from fault_runs import cli, driver_session, kill_when, start_cli

pytestmark = pytest.mark.slow
RECIPE = "recipes/magpie-cpu.yaml"
SMALL = ["prompts.per_iteration=8", "prompts.magpie.candidates=12", "prompts.eval_size=8", "train.epochs=1",
         "evaluate.every=2", "evaluate.kl=false", "tracking.wandb=false"]


def prompts_of(run_dir, iteration: int) -> list[dict]:
    return pq.read_table(run_dir / f"iter-{iteration:03d}/magpie/prompts.parquet").to_pylist()


def manifest(run_dir, iteration: int, stage: str) -> dict:
    return json.loads((run_dir / f"iter-{iteration:03d}/{stage}/manifest.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_policy):
    base = tmp_path_factory.mktemp("magpie")
    unbroken, resumed = base / "unbroken", base / "resumed"
    result = cli("run", RECIPE, "--run-dir", str(unbroken), *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    with driver_session(start_cli("run", RECIPE, "--run-dir", str(resumed), *SMALL, hold="2:magpie")) as process:
        kill_when(process, resumed / "iter-002/magpie.tmp")
    assert manifest(resumed, 1, "train")["status"] == "done"
    assert not (resumed / "iter-002/magpie/manifest.json").exists()  # killed before iteration 2's prompts
    result = cli("resume", str(resumed))
    assert result.returncode == 0, result.stderr[-3000:]
    return unbroken, resumed


def test_prompts_are_deterministic_and_survive_kill_and_resume(runs):
    unbroken, resumed = runs
    for iteration in (1, 2):
        assert prompts_of(resumed, iteration) == prompts_of(unbroken, iteration)
        assert manifest(resumed, iteration, "magpie")["outputs"] == manifest(unbroken, iteration, "magpie")["outputs"]
    first, second = ([row["prompt"] for row in prompts_of(unbroken, t)] for t in (1, 2))
    assert first and second and first != second  # iteration 2's writer is the trained policy, with new seeds


def test_no_kept_prompt_is_an_eval_prompt_and_every_drop_is_counted(runs):
    unbroken, _ = runs
    pool = load_prompt_pool(load_recipe(REPO / RECIPE, SMALL))
    eval_keys = {normalized(pool.prompts[i]) for i in pool.eval_ids}
    for iteration in (1, 2):
        kept = [row["prompt"] for row in prompts_of(unbroken, iteration)]
        assert not {normalized(text) for text in kept} & eval_keys
        metrics = manifest(unbroken, iteration, "magpie")["metrics"]
        dropped = sum(value for key, value in metrics.items() if key.startswith("dropped_"))
        assert metrics["candidates"] == 12 and metrics["passed"] + dropped == 12
        assert metrics["kept"] == len(kept) == min(metrics["passed"], 8)


def test_generate_samples_the_kept_prompts_and_evaluation_the_held_out_ones(runs):
    unbroken, _ = runs
    for iteration in (1, 2):
        kept = [row["prompt"] for row in prompts_of(unbroken, iteration)]
        samples = pq.read_table(unbroken / f"iter-{iteration:03d}/generate/samples.parquet").to_pylist()
        assert sorted({(s["prompt_id"], s["prompt"]) for s in samples}) == list(enumerate(kept))
        assert manifest(unbroken, iteration, "generate")["inputs"]["prompts"] == \
            manifest(unbroken, iteration, "magpie")["outputs"]["prompts.parquet"]
    pool = load_prompt_pool(load_recipe(REPO / RECIPE, SMALL))
    evaluated = pq.read_table(unbroken / "iter-002/eval-gen/samples.parquet").column("prompt").to_pylist()
    assert set(evaluated) == {pool.prompts[i] for i in pool.eval_ids}


def test_a_named_model_of_another_architecture_writes_the_prompts(tmp_path, tiny_policy):
    run_dir = tmp_path / "named"
    result = cli("run", RECIPE, "--run-dir", str(run_dir), *SMALL, "iterations=1", "evaluate.every=1",
                 "prompts.magpie.model=tiny:qwen2")
    assert result.returncode == 0, result.stderr[-3000:]
    written = manifest(run_dir, 1, "magpie")
    assert written["inputs"]["writer"] != manifest(run_dir, 1, "generate")["inputs"]["policy"]
    assert written["metrics"]["kept"] == len(prompts_of(run_dir, 1)) > 0
    samples = pq.read_table(run_dir / "iter-001/generate/samples.parquet").column("prompt").to_pylist()
    assert set(samples) == {row["prompt"] for row in prompts_of(run_dir, 1)}
