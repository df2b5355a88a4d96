"""The train stage: N DeepSpeed ranks as Ray actors in one placement group.

Rank 0 reports the rendezvous address; every rank joins, trains on its share of each global
batch and, for ZeRO-3, helps gather the weights that rank 0 saves as HF safetensors.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from selfplay import runs
from selfplay.artifacts import iteration_folder
from selfplay.cluster import where_it_runs
from selfplay.pipeline import StageResult
from selfplay.train.trainer import TrainerRank


def train_policy(policy_path: str, reference_path: str, pairs_path: str, out_dir: str, config,
                 checkpoint_dir: str | None = None) -> dict:
    from selfplay.train.settings import TrainSettings

    settings = TrainSettings.of(config)  # what the ranks read: typed and frozen
    world_size = config.world_size
    bundle = {"CPU": 1, **({"GPU": config.num_gpus_per_rank} if config.num_gpus_per_rank else {})}
    group = placement_group([bundle] * world_size, strategy="PACK")
    ray.get(group.ready())
    threads = 0 if config.num_gpus_per_rank else max(1, (os.cpu_count() or 1) // world_size)
    actor = ray.remote(num_cpus=1, num_gpus=config.num_gpus_per_rank)(TrainerRank)
    ranks = [actor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=r))
             .remote(r, world_size, threads) for r in range(world_size)]
    try:
        address, port = ray.get(ranks[0].rendezvous_address.remote())
        ray.get([rank.connect.remote(address, port) for rank in ranks])
        placement = ray.get([rank.__ray_call__.remote(where_it_runs) for rank in ranks])
        results = ray.get([rank.train.remote(policy_path, reference_path, pairs_path, out_dir, settings, checkpoint_dir)
                           for rank in ranks])
        ray.get([rank.shutdown.remote() for rank in ranks])
        return {**results[0], "rank_placement": [{"rank": r, **where} for r, where in enumerate(placement)]}
    finally:
        for rank in ranks:
            ray.kill(rank)
        remove_placement_group(group)


# Which policy a reference rule (train.reference) names, as RunContext.policy sources.
REFERENCE_SOURCES = {"previous": "entering", "initial": "initial", "soup": "soup"}


@dataclass
class Train:
    """Train a policy on the iteration's pairs.parquet into policy/ (HF safetensors) and
    history.jsonl (one row per optimizer step). `train` each iteration; `seed` (iteration 0)
    trains the initial policy on labelled pairs before iteration 1 (DRIFT, Selfie)."""

    iteration: int
    settings: object  # TrainConfig: recipe.train, or the seed stage's
    name: str = "train"
    policy_source: str = "entering"
    produces = ("policy", "history.jsonl")

    @classmethod
    def seed(cls, recipe):
        return cls(0, recipe.seed_train_config(), name="seed", policy_source="initial")

    def reference(self, ctx):
        source = "initial" if self.name == "seed" else REFERENCE_SOURCES[self.settings.reference]
        return ctx.policy(source, self.iteration)

    def inputs(self, ctx) -> dict:
        return {"policy": ctx.policy(self.policy_source, self.iteration).digest, "reference": self.reference(ctx).digest,
                "pairs": ctx.latest(self, "pairs.parquet").digest}

    def config(self, ctx) -> dict:
        return self.settings.model_dump()

    def run(self, ctx, tmp) -> StageResult:
        config, reference = self.settings, self.reference(ctx)
        checkpoints = self.checkpoints(ctx)
        ctx.actors.release_engines()
        ctx.actors.make_room("train")  # the seed stage's config differs in no GPU field
        if config.checkpoint_every:
            prepare_checkpoints(checkpoints, {"inputs": self.inputs(ctx), "config": config.model_dump()})
        result = train_policy(str(ctx.policy(self.policy_source, self.iteration).path), str(reference.path),
                              str(ctx.latest(self, "pairs.parquet").path), str(tmp / "policy"), config,
                              str(checkpoints) if config.checkpoint_every else None)
        history = result.pop("history")
        (tmp / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        last = history[-1]
        metrics = {"loss": sum(h["loss"] for h in history) / len(history), "final_loss": last["loss"],
                   "accuracy": last["accuracy"], "steps": len(history), "pairs": result["num_pairs"],
                   "reference_seconds": result["reference_seconds"]}
        if "loss_over_eta_sq" in last:
            metrics["loss_over_eta_sq"] = sum(h["loss_over_eta_sq"] for h in history) / len(history)
        extra = {"reference": {"rule": config.reference, "path": str(reference.path), "digest": reference.digest},
                 "rank_placement": result["rank_placement"],  # each DeepSpeed rank's node and PID
                 # where this stage's steps start on the run-wide train-step axis (metrics.jsonl, W&B)
                 "first_global_step": self.earlier_steps(ctx),
                 "schedule": {"total_steps": result["total_steps"], "warmup_steps": result["warmup_steps"],
                              "epochs": config.epochs, "scheduler": config.scheduler,
                              "gradient_accumulation_steps": result["gradient_accumulation_steps"]}}
        return StageResult(["policy", "history.jsonl"], metrics, extra)

    def checkpoints(self, ctx) -> Path:
        """In-stage checkpoints (train.checkpoint_every): a killed stage resumes from them."""
        return iteration_folder(ctx.run_dir, self.iteration) / f"{self.name}.checkpoints"

    def committed(self, ctx) -> None:
        shutil.rmtree(self.checkpoints(ctx), ignore_errors=True)  # the committed policy replaces them

    def earlier_steps(self, ctx) -> int:
        earlier = [] if self.name == "seed" else [runs.StageDir(ctx.run_dir, 0, "seed").manifest()]
        earlier += [runs.StageDir(ctx.run_dir, t, "train").manifest() for t in range(1, self.iteration)]
        return sum(m["metrics"]["steps"] for m in earlier if m)


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
    name = "seed-pairs"
    produces = ("pairs.parquet",)

    def inputs(self, ctx) -> dict:
        return {"seed_pairs": ctx.external(ctx.recipe.seed_training.path).digest}

    def config(self, ctx) -> dict:
        return ctx.recipe.seed_training.model_dump()

    def run(self, ctx, tmp) -> StageResult:
        from selfplay.train.seed_pairs import load_seed_pairs

        rows = load_seed_pairs(ctx.recipe.seed_training.path, ctx.tokenizer)
        pq.write_table(pa.Table.from_pylist(rows), tmp / "pairs.parquet")
        return StageResult(["pairs.parquet"], {"pairs": len(rows)})


@dataclass
class Soup:
    """SALSA's reference: the weight average of train.soup, built once per run."""

    iteration: int
    name = "reference-soup"
    produces = ("policy",)

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
        weight_soup(checkpoints, tmp / "policy")
        return StageResult(["policy"], {"checkpoints": len(checkpoints)}, {"soup": checkpoints})
