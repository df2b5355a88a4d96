"""The driver: check the recipe, open the run directory, then walk the pipeline's stages.

`Driver.run` does the side effects once per run: pre-flight checks (before the run directory
is touched), the run lock, Ray, run.json, the tracker and the long-lived actors, gathered in a
RunContext. `walk` then runs `pipeline.stages(recipe, t)` for t = 0 (baseline, seed stages),
then the run's iterations; every stage is skipped when done with the same inputs and config,
so resume is "run again". The science lives in the stage modules; the order in pipeline.py.
"""

import logging
import time
from pathlib import Path

from selfplay import lineage, pipeline, runs
from selfplay.context import RunContext
from selfplay.pipeline import StageFailed  # noqa: F401  (the CLI's import)
from selfplay.recipe import Recipe
from selfplay.stage_names import BASELINE, EVALUATE, SAMPLES_PARQUET, TRAIN

log = logging.getLogger("selfplay")


class Driver:
    def __init__(self, recipe: Recipe, run_dir: Path, ray_address: str | None = None, allow_changes: bool = False):
        self.recipe = recipe
        self.run_dir = Path(run_dir).resolve()
        self.ray_address = ray_address
        self.allow_changes = allow_changes
        self.context = None

    @property
    def running(self) -> tuple | None:
        """(iteration, stage) last entered: what an interrupt stopped."""
        return self.context.running if self.context else None

    def run(self, parent: dict | None = None) -> list[dict]:
        from selfplay import console
        from selfplay.actors import Actors
        from selfplay.cluster import check_cluster_fit, gpu_needs, record_local_processes, start_ray, stop_leftovers
        from selfplay.models import resolve_model
        from selfplay.preflight import check_lora_targets, check_recipe, load_tokenizer
        from selfplay.track.tracker import Tracker

        recipe = self.recipe
        lineage.check_run_dir(self.run_dir)  # before anything is written, even a tiny model's cache
        # Pre-flight, before the run directory is touched (and before Ray's start-up): model
        # folders, tiny kinds, prompts and seed pairs. A broken one must not freeze a run.json.
        pool = check_recipe(recipe)
        initial_policy = str(resolve_model(recipe.policy.path, recipe.policy.seed))  # a tiny: one is built
        tokenizer = load_tokenizer("policy.path", initial_policy)
        check_lora_targets(initial_policy, recipe.train.lora)
        with runs.RunLock(self.run_dir):
            console.log_to_run_dir(self.run_dir)  # before Ray starts: its lines and the actors' go there
            if pool.duplicates:
                log.info("prompts: %d rows repeat an earlier prompt (same text up to case and whitespace) and are "
                         "never selected; %d distinct prompts", pool.duplicates, len(pool.prompts) - pool.duplicates)
            stop_leftovers(self.run_dir)  # of an earlier driver of this run, killed alone

            def start_cluster():
                if start_ray(self.ray_address, recipe.generate.replicas + recipe.train.world_size + 1):
                    record_local_processes(self.run_dir)  # the local cluster this driver started
                check_cluster_fit(recipe, initial_policy)

            last = runs.StageDir(self.run_dir, recipe.iterations, pipeline.stages(recipe, recipe.iterations)[-1].name)
            finished = last.manifest() is not None  # a finished run run again: most likely nothing to do
            if not finished:  # before run.json: a recipe the cluster cannot hold leaves no run behind
                start_cluster()
            started = time.time()
            info = lineage.init_run_dir(self.run_dir, recipe, self.allow_changes, parent)
            accepted = [c for c in info.get("recipe_changes", []) if c.get("at", 0) >= started]
            ctx = self.context = RunContext(
                run_dir=self.run_dir, recipe=recipe, info=info, tokenizer=tokenizer,
                actors=Actors(recipe, initial_policy, gpu_needs(recipe)), prompts=pool.prompts, records=pool.records,
                duplicate_prompts=pool.duplicates, eval_ids=pool.eval_ids, slices=pool.slices,
                packages=runs.package_versions(), code_version=runs.code_version(),
                change_note={"recipe_change": accepted[-1]["keys"]} if accepted else None,
                tracker=Tracker(self.run_dir, info, recipe, info["recipe"]))
            ctx.initial = ctx.external(initial_policy)
            if finished:  # Ray (seconds to start and stop) only when a stage must run after all
                ctx.start_cluster = start_cluster
            if info.get("parent"):
                ctx.first_iteration = info["parent"]["iteration"]
            if ctx.first_iteration > 1:  # a fork: its own copy of the parent's policy, checked against run.json
                ctx.fork_start = lineage.fork_start_policy(self.run_dir, info)
            # on one local node (no placement order can strand a later group), unless the last
            # train stage is committed (a finished run run again): they start while the engines do
            if self.ray_address is None and not finished and \
                    runs.StageDir(self.run_dir, recipe.iterations, TRAIN).manifest() is None:
                ctx.actors.start_training_ranks(recipe.train)
            try:
                return walk(ctx)
            finally:
                ctx.tracker.finish()
                ctx.actors.drop()


def walk(ctx: RunContext) -> list[dict]:
    """Run every stage of the run in order; one summary row per iteration (0: the initial policy)."""
    forked = ctx.fork_start is not None
    summary = []
    for iteration in [0, *range(ctx.first_iteration, ctx.recipe.iterations + 1)]:
        manifests = {stage.name: pipeline.run_stage(ctx, stage)
                     for stage in pipeline.stages(ctx.recipe, iteration, forked)}
        summary.append(summary_row(ctx, iteration, manifests))
    return summary


def summary_row(ctx: RunContext, iteration: int, manifests: dict[str, dict]) -> dict:
    """What the CLI's table shows for an iteration: its evaluation, mean train loss, stage seconds."""
    from selfplay.evaluate.stage import response_stats

    if iteration == 0:  # the initial policy, the reference point of every win rate
        baseline = ctx.artifact(0, BASELINE, SAMPLES_PARQUET).table()
        return {"iteration": 0, "win_rate_vs_initial": 0.5, **response_stats(baseline), "loss": None, "seconds": {}}
    evaluated = manifests.get(EVALUATE, {}).get("metrics", {})
    return {"iteration": iteration, **evaluated, "loss": manifests[TRAIN]["metrics"]["loss"],
            "seconds": {name: manifest["seconds"] for name, manifest in manifests.items()}}
