"""The train stage: the run's DeepSpeed ranks (selfplay.train.ranks) train the entering policy.

Every rank trains on its share of each global batch and, for ZeRO-3, helps gather the weights
that rank 0 saves as HF safetensors. The ranks outlive the stage (`train.keep_ranks`); once the
stage is committed they are told the digest of the policy they hold, so the next stage trains it
from memory.
"""

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from selfplay import runs
from selfplay.artifacts import iteration_folder
from selfplay.pipeline import StageResult
from selfplay.stage_names import (
    HISTORY_JSONL,
    PAIRS_PARQUET,
    POLICY_FOLDER,
    REFERENCE_SOUP,
    SEED,
    SEED_PAIRS,
    TRAIN,
    TRAIN_PAIRS_PARQUET,
)

log = logging.getLogger("selfplay")

# Which policy a reference rule (train.reference) names, as RunContext.policy sources.
REFERENCE_SOURCES = {"previous": "entering", "initial": "initial", "soup": "soup"}


def cut_counts(pairs: pa.Table, max_length: int, max_prompt_length: int) -> dict:
    """How many pairs the trainer cuts (selfplay.models.logps.pad_sequences): prompts over
    train.max_prompt_length lose their first tokens, so the policy is not trained on all it
    was sampled from; responses past train.max_length lose their end."""
    prompts = [len(ids) for ids in pairs.column("prompt_token_ids").to_pylist()]
    responses = [name.removesuffix("_token_ids") for name in pairs.column_names
                 if name.endswith("_token_ids") and name != "prompt_token_ids"]
    longest = [max(len(ids) for ids in row) for row in zip(*(pairs.column(f"{r}_token_ids").to_pylist()
                                                             for r in responses))]
    return {"prompts_cut": sum(n > max_prompt_length for n in prompts),
            "responses_cut": sum(min(p, max_prompt_length) + r > max_length for p, r in zip(prompts, longest))}


@dataclass
class Train:
    """Train a policy on the iteration's pairs.parquet into policy/ (HF safetensors) and
    history.jsonl (one row per optimizer step). `train` each iteration; `seed` (iteration 0)
    trains the initial policy on labelled pairs before iteration 1 (DRIFT, Selfie).

    A curriculum (selfplay.methods.curriculum) gives a `pairs_view`, which picks or orders the pairs
    this stage trains on (saved as train_pairs.parquet), and `starts_from`, the earlier stage of
    the iteration whose policy this one trains (Curry-DPO's tiers)."""

    iteration: int
    settings: object  # TrainConfig: recipe.train, or the seed stage's
    name: str = TRAIN
    policy_source: str = "entering"
    pairs_view: object = None  # describe() -> dict, select(pairs table) -> pairs table
    starts_from: str | None = None

    @property
    def produces(self) -> tuple[str, ...]:
        return (POLICY_FOLDER, HISTORY_JSONL, *((TRAIN_PAIRS_PARQUET,) if self.pairs_view else ()))

    @classmethod
    def seed(cls, recipe):
        return cls(0, recipe.seed_train_config(), name=SEED, policy_source="initial")

    def needs_reference(self) -> bool:
        from selfplay.methods import LOSSES

        return LOSSES[self.settings.loss].needs_reference

    def policy(self, ctx):
        if self.starts_from is not None:
            return ctx.artifact(self.iteration, self.starts_from, POLICY_FOLDER)
        return ctx.policy(self.policy_source, self.iteration)

    def reference(self, ctx):
        """The reference policy, or None for a loss that needs none (TPO, ASFT: nothing is loaded)."""
        if not self.needs_reference():
            return None
        if self.starts_from is not None and self.settings.reference == "previous":
            return self.policy(ctx)  # Curry-DPO: the previous tier's model
        source = "initial" if self.name == SEED else REFERENCE_SOURCES[self.settings.reference]
        return ctx.policy(source, self.iteration)

    def inputs(self, ctx) -> dict:
        """The policy, reference and pairs it trains on, and the histories of the train stages
        before it, whose steps place this stage's on the run-wide step axis (first_global_step)."""
        histories, reference = self.earlier_histories(ctx), self.reference(ctx)
        inputs = {"policy": self.policy(ctx).digest, **({} if reference is None else {"reference": reference.digest}),
                  "pairs": ctx.latest(self, PAIRS_PARQUET).digest,
                  "earlier_histories": runs.digest_of([history.digest for history in histories])}
        # committed before the histories were an input: done while the steps they count are the same
        steps = sum(history.metrics["steps"] for history in histories)
        return ctx.inputs_as_committed(self, inputs, "earlier_histories",
                                       lambda manifest: manifest.get("first_global_step", steps) == steps)

    def config(self, ctx) -> dict:
        # where the ranks live changes no result; nor, for a reference-free loss, the reference rule.
        # The curriculum is in the pairs view's description (none when pooled: earlier runs' digests hold).
        unused = {"keep_ranks", "curriculum"}
        if not self.needs_reference():
            unused |= {"reference", "soup"}
        if self.settings.lora is None:  # full fine-tuning: the digests of runs from before train.lora existed hold
            unused |= {"lora"}
        config = self.settings.model_dump(exclude=unused)
        if self.pairs_view is not None:
            config["pairs_view"] = self.pairs_view.describe()
        return config

    def run(self, ctx, tmp) -> StageResult:
        config, reference, policy = self.settings, self.reference(ctx), self.policy(ctx)
        pairs_path = ctx.latest(self, PAIRS_PARQUET).path
        if self.pairs_view is not None:
            pairs = self.pairs_view.select(pq.read_table(pairs_path))
            pairs_path = tmp / TRAIN_PAIRS_PARQUET
            pq.write_table(pairs, pairs_path)
            if pairs.num_rows == 0:  # no prompt has this tier's pair (ties): the policy passes through
                return self.unchanged(ctx, tmp, policy, reference)
        cuts = cut_counts(pq.read_table(pairs_path), config.max_length, config.max_prompt_length)
        if cuts["prompts_cut"]:
            log.warning("%s: %d pairs' prompts are longer than train.max_prompt_length (%d): the policy is trained "
                        "on their last %d tokens, not on all it was sampled from; raise train.max_prompt_length",
                        self.name, cuts["prompts_cut"], config.max_prompt_length, config.max_prompt_length)
        checkpoints = self.checkpoints(ctx)
        ctx.actors.release_engines()
        ranks = ctx.actors.training_ranks(config)  # the seed stage's config differs in no resource field
        if config.checkpoint_every:
            prepare_checkpoints(checkpoints, {"inputs": self.inputs(ctx), "config": self.config(ctx)})
        try:
            result = ranks.train((str(policy.path), policy.digest),
                                 None if reference is None else (str(reference.path), reference.digest),
                                 str(pairs_path), str(tmp / POLICY_FOLDER), config,
                                 str(checkpoints) if config.checkpoint_every else None)
        except Exception:  # a rank that failed mid-collective cannot train again: the next stage starts new ones
            ctx.actors.drop_training_ranks()
            raise
        finally:
            if not config.keep_ranks:
                ctx.actors.drop_training_ranks()
        history = result.pop("history")
        (tmp / HISTORY_JSONL).write_text("".join(json.dumps(h) + "\n" for h in history))
        last = history[-1]
        metrics = {"loss": sum(h["loss"] for h in history) / len(history), "final_loss": last["loss"],
                   "accuracy": last["accuracy"], "steps": len(history), "pairs": result["num_pairs"],
                   "reference_seconds": result["reference_seconds"], **cuts}
        if "loss_over_eta_sq" in last:
            metrics["loss_over_eta_sq"] = sum(h["loss_over_eta_sq"] for h in history) / len(history)
        extra = {**self.described(reference),
                 "rank_placement": result["rank_placement"],  # each DeepSpeed rank's node and PID
                 "ranks": result["ranks"],  # kept from an earlier stage or started; policy from memory or disk
                 # where this stage's steps start on the run-wide train-step axis (metrics.jsonl, W&B)
                 "first_global_step": self.earlier_steps(ctx),
                 "schedule": {"total_steps": result["total_steps"], "warmup_steps": result["warmup_steps"],
                              "epochs": config.epochs, "scheduler": config.scheduler,
                              "gradient_accumulation_steps": result["gradient_accumulation_steps"]}}
        return StageResult(list(self.produces), metrics, extra)

    def described(self, reference) -> dict:
        """The manifest's record of what this stage trained against, and of its curriculum tier."""
        described = {"reference": {"rule": "none"} if reference is None else  # a reference-free loss read none
                     {"rule": self.settings.reference, "path": str(reference.path), "digest": reference.digest}}
        if self.pairs_view is not None:
            described["curriculum"] = {**self.pairs_view.describe(), "starts_from": self.starts_from or "entering"}
        return described

    def unchanged(self, ctx, tmp, policy, reference) -> StageResult:
        """A tier without pairs: its policy is the one it starts from, file for file."""
        runs.link_tree(policy.path, tmp / POLICY_FOLDER, [])  # a 7B checkpoint is not copied for a tier that trained nothing
        (tmp / HISTORY_JSONL).write_text("")
        extra = {**self.described(reference), "first_global_step": self.earlier_steps(ctx)}
        return StageResult(list(self.produces), {"steps": 0, "pairs": 0}, extra)

    def checkpoints(self, ctx) -> Path:
        """In-stage checkpoints (train.checkpoint_every): a killed stage resumes from them."""
        return iteration_folder(ctx.run_dir, self.iteration) / f"{self.name}.checkpoints"

    def committed(self, ctx) -> None:
        shutil.rmtree(self.checkpoints(ctx), ignore_errors=True)  # the committed policy replaces them
        if ctx.actors is not None and ctx.actors.ranks is not None:  # they hold what they just trained
            trained = ctx.artifact(self.iteration, self.name, POLICY_FOLDER)
            ctx.actors.ranks.holds(str(runs.StageDir(ctx.run_dir, self.iteration, self.name).tmp / POLICY_FOLDER),
                                   trained.digest)

    def earlier_histories(self, ctx) -> list:
        """history.jsonl of every committed train stage before this one: the seed stage's, every
        earlier iteration's (Curry-DPO's tiers included) and this iteration's earlier tiers."""
        from selfplay import pipeline

        names = [stage.name for stage in pipeline.stages(ctx.recipe, max(self.iteration, 1)) if isinstance(stage, Train)]
        earlier = ctx.earlier_iterations(self, HISTORY_JSONL, made_by=(SEED, *names))
        if self.iteration and self.name in names:
            earlier += [ctx.artifact(self.iteration, name, HISTORY_JSONL) for name in names[:names.index(self.name)]]
        return earlier

    def earlier_steps(self, ctx) -> int:
        return sum(history.metrics["steps"] for history in self.earlier_histories(ctx))


def prepare_checkpoints(folder: Path, key: dict) -> None:
    """Keep in-stage training checkpoints only if they belong to the same inputs and config."""
    key_path = folder / "key.json"
    if folder.exists() and runs.read_scratch_json(key_path, None) != runs.digest_of(key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_json_atomic(key_path, runs.digest_of(key))


@dataclass
class SeedPairs:
    """The labelled seed pairs (seed_training.path), tokenized into pairs.parquet."""

    iteration: int
    name = SEED_PAIRS
    produces = (PAIRS_PARQUET,)

    def inputs(self, ctx) -> dict:
        return {"seed_pairs": ctx.external(ctx.recipe.seed_training.path).digest}

    def config(self, ctx) -> dict:
        return ctx.recipe.seed_training.model_dump()

    def run(self, ctx, tmp) -> StageResult:
        from selfplay.train.seed_pairs import load_seed_pairs

        rows = load_seed_pairs(ctx.recipe.seed_training.path, ctx.tokenizer)
        pq.write_table(pa.Table.from_pylist(rows), tmp / PAIRS_PARQUET)
        return StageResult([PAIRS_PARQUET], {"pairs": len(rows)})


@dataclass
class Soup:
    """SALSA's reference: the weight average of train.soup, built once per run."""

    iteration: int
    name = REFERENCE_SOUP
    produces = (POLICY_FOLDER,)

    def checkpoints(self, ctx) -> list[str]:
        from selfplay.models import resolve_model

        return [str(resolve_model(path, ctx.recipe.policy.seed)) for path in ctx.recipe.train.soup]

    def inputs(self, ctx) -> dict:
        return {path: ctx.external(path).digest for path in self.checkpoints(ctx)}

    def config(self, ctx) -> dict:
        return {"soup": self.checkpoints(ctx)}

    def run(self, ctx, tmp) -> StageResult:
        from selfplay.train.reference import weight_soup

        checkpoints = self.checkpoints(ctx)
        weight_soup(checkpoints, tmp / POLICY_FOLDER)
        return StageResult([POLICY_FOLDER], {"checkpoints": len(checkpoints)}, {"soup": checkpoints})
