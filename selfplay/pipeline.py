"""The pipeline, declared once: which stages an iteration runs, in order, and how a stage runs.

`stages(recipe, iteration)` is the one list the driver walks and `selfplay status`, the lineage
view, the CLI's summary and W&B read:
- iteration 0: the initial policy's eval samples (`baseline`), its reference responses to every
  training prompt when the judge's scores are shaped (`reference-samples`, PAR), SALSA's soup
  reference, and the seed stage (plain preference training on labelled pairs: DRIFT, Selfie);
- iteration t >= 1: generate -> annotate -> pairs -> train -> eval-gen -> evaluate, after the
  magpie stage that writes the iteration's prompts when `prompts.source: magpie`; a pair rule
  with its own `front` (DRIFT's hindsight generation and pairs, selfplay/methods/drift.py)
  replaces generate/annotate/pairs; evaluation runs every `evaluate.every` iterations and at the
  last one. A pair rule with its own `train` stages (Curry-DPO's tiers, train.curriculum tiers,
  selfplay/methods/curriculum.py) puts a train stage per tier before `train`.

A stage is an object with a `name`, its `iteration`, `inputs(ctx)` (the digests of what it reads),
`config(ctx)` (what else decides its result) and `run(ctx, tmp) -> StageResult`, writing its
outputs into `tmp`. `run_stage` skips a stage whose manifest is done with the same inputs and
config, otherwise runs it into a temporary folder and commits it (runs.py): resume is "run
again". A stage reads the latest artifact of a name in its iteration (`ctx.latest`), so a new
stage between two others (a filter between annotate and pairs) is one module and one entry here.
"""

import json
import logging
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from typing import Protocol

from selfplay import runs
from selfplay.failures import DeadEnd, error_summary, is_worker_failure

log = logging.getLogger("selfplay")

# Fault tests only (tests/fault_runs.py): "<iteration>:<stage>" keeps the driver in that stage, its
# outputs written to <stage>.tmp/ but not committed, so a test's kill or signal lands inside the
# stage for certain. Stages of 0.1 s otherwise race a test that polls for their .tmp folder.
HOLD_BEFORE_COMMIT = "SELFPLAY_HOLD_BEFORE_COMMIT"
HOLD_SECONDS = 600


class StageFailed(RuntimeError):
    """A stage raised; the run directory keeps every finished stage, so `resume` continues."""


@dataclass
class StageResult:
    outputs: list[str]  # names under the stage's folder, hashed into the manifest
    metrics: dict
    extra: dict = field(default_factory=dict)  # more manifest fields


class Stage(Protocol):
    name: str
    iteration: int
    produces: tuple[str, ...]  # the artifact names it commits

    def inputs(self, ctx) -> dict[str, str]: ...

    def config(self, ctx) -> dict: ...

    def run(self, ctx, tmp) -> StageResult: ...

    # optional: `committed(ctx)`, called once the result is committed (or found done), to remove
    # scratch the stage kept across attempts (the train stage's in-stage checkpoints)


def stages(recipe, iteration: int, forked: bool = False) -> list[Stage]:
    """The stages of `iteration` in the order they run. `forked`: the run is a fork that starts
    from its parent's policy, so iteration 0 trains no seed policy."""
    from selfplay.annotate.stage import Annotate
    from selfplay.evaluate.stage import Evaluate
    from selfplay.generate.stage import Sample
    from selfplay.methods import LOSSES, PAIR_RULES
    from selfplay.pairs.stage import Pairs
    from selfplay.train.stage import SeedPairs, Soup, Train

    if iteration == 0:
        listed = [Sample.baseline(recipe)]
        if recipe.annotate.shaping is not None:  # PAR's reference responses, sampled once for every iteration
            listed.append(Sample.reference(recipe))
        if recipe.train.reference == "soup" and LOSSES[recipe.train.loss].needs_reference:
            listed.append(Soup(0))
        if recipe.seed_training and not forked:
            listed += [SeedPairs(0), Train.seed(recipe)]
        return listed
    rule = PAIR_RULES[recipe.pairs.type]
    if rule.front is not None:
        listed = rule.front(recipe, iteration)
    else:
        listed = [Sample.generate(recipe, iteration), Annotate(iteration), Pairs(iteration)]
        if recipe.prompts.source == "magpie":  # the iteration's prompts, written by a model first
            from selfplay.magpie.stage import MagpiePrompts

            listed.insert(0, MagpiePrompts(iteration))
    listed += rule.train(recipe, iteration) if rule.train else [Train(iteration, recipe.train)]
    if evaluates(recipe, iteration):
        listed += [Sample.evaluation(recipe, iteration), Evaluate(iteration)]
    return listed


def evaluates(recipe, iteration: int) -> bool:
    return iteration % recipe.evaluate.every == 0 or iteration == recipe.iterations


def stage_names(recipe, iteration: int) -> list[str]:
    return [stage.name for stage in stages(recipe, iteration)]


def run_stage(ctx, stage: Stage) -> dict:
    """Run `stage` unless it is done with the same inputs and config; its manifest either way."""
    iteration, name = stage.iteration, stage.name
    ctx.running = (iteration, name)
    folder = runs.StageDir(ctx.run_dir, iteration, name)
    inputs, config = stage.inputs(ctx), stage.config(ctx)
    config_digest = runs.digest_of(config)
    if folder.is_done(inputs, config_digest):
        shutil.rmtree(folder.tmp, ignore_errors=True)  # debris of a crash after the stage had finished
        log.info("iter %d %-9s done earlier, skipped", iteration, name)
        manifest = folder.manifest()
        record(ctx, folder, manifest)  # its metrics.jsonl rows, if a crash came before them
        _committed(ctx, stage)
        return manifest
    _say_if_prompts_changed(folder, config)
    if ctx.start_cluster is not None:
        ctx.start_cluster()
        ctx.start_cluster = None
    failed_path = folder.failed_path
    started = time.time()
    retries = ctx.recipe.max_stage_retries
    for attempt in range(retries + 1):
        tmp = folder.begin()
        log.info("iter %d %-9s running%s", iteration, name, f" (retry {attempt})" if attempt else "")
        try:
            result = stage.run(ctx, tmp)
            break
        except Exception as error:
            summary = error_summary(error)
            runs.write_json_atomic(failed_path, {"error": summary[:500], "attempt": attempt, "at": time.time(),
                                                 "traceback": traceback.format_exc()})
            if isinstance(error, DeadEnd):  # the same inputs fail the same way: no retry, no resume advice
                raise DeadEnd(f"iteration {iteration} stage {name}: {error}") from error
            if not is_worker_failure(error) or attempt == retries:
                if isinstance(error, OSError):  # disk full, read-only: the CLI explains it
                    raise
                raise StageFailed(f"iteration {iteration} stage {name} failed after {attempt + 1} attempt(s): "
                                  f"{summary[:300]} (traceback in {failed_path})") from error
            log.warning("iter %d %-9s: a Ray worker died (%s); retrying", iteration, name, type(error).__name__)
            if ctx.actors is not None:
                ctx.actors.drop()
    if os.environ.get(HOLD_BEFORE_COMMIT) == f"{iteration}:{name}":
        log.info("iter %d %-9s held before its commit (%s), at most %d s", iteration, name, HOLD_BEFORE_COMMIT,
                 HOLD_SECONDS)
        time.sleep(HOLD_SECONDS)
    seconds = time.time() - started
    failed_path.unlink(missing_ok=True)
    manifest = {"iteration": iteration, "stage": name, "inputs": inputs, "config": config,
                "config_digest": config_digest, "started_at": started, "seconds": seconds,
                "metrics": result.metrics, "packages": ctx.packages, "code_version": ctx.code_version,
                "run_id": ctx.info.get("run_id"), **result.extra}
    if ctx.actors is not None:
        manifest["placement"] = ctx.actors.placement()
    manifest = folder.commit(result.outputs, manifest, ctx.change_note)  # an earlier result goes to superseded/
    record(ctx, folder, manifest)
    _committed(ctx, stage)
    log.info("iter %d %-9s finished in %.1f s", iteration, name, seconds)
    return manifest


def _say_if_prompts_changed(folder: runs.StageDir, config: dict) -> None:
    """An edited prompt file redoes a finished stage: say so, or the redo looks like a bug."""
    old = (folder.manifest() or {}).get("config")
    if isinstance(old, dict) and old.get("prompts_digest", config.get("prompts_digest")) != config.get("prompts_digest"):
        log.warning("iter %d %-9s its prompts changed (the prompt file was edited): redone, the old result goes "
                    "to superseded/", folder.iteration, folder.name)


def _committed(ctx, stage: Stage) -> None:
    if hasattr(stage, "committed"):
        stage.committed(ctx)


def record(ctx, folder: runs.StageDir, manifest: dict) -> None:
    """The stage's rows in metrics.jsonl (and W&B): its train steps, if any, then its metrics;
    and its outputs as W&B reference artifacts. Idempotent: a stage found done calls it again."""
    steps = []
    if "first_global_step" in manifest:
        history = (folder.path / "history.jsonl").read_text().splitlines()
        steps = [{**json.loads(line), "global_step": manifest["first_global_step"] + offset}
                 for offset, line in enumerate(history)]
    ctx.tracker.record(folder.iteration, folder.name, {**manifest["metrics"], "seconds": manifest["seconds"]},
                       manifest["started_at"], steps)
    ctx.tracker.log_stage_artifacts(ctx.run_dir, folder.iteration, folder.name, manifest)  # W&B lineage graph
