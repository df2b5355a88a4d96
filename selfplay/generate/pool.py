"""Data-parallel vLLM replicas as Ray actors, with prompts sharded over them (none dropped).

The pool is created once per run (recipe `generate.keep_engine: true`) and each iteration's
policy is loaded in place; with keep_engine false the engines are rebuilt per stage. A replica
runs on CUDA when the recipe gives it GPUs (`generate.num_gpus_per_replica > 0`), else on CPU.

Placement: each replica is a Ray placement group of `tensor_parallel_size` bundles, one per
tensor-parallel worker, packed on one node (STRICT_PACK: a TP group talks over NVLink or
shared memory, never across nodes). The engine actor sits in bundle 0 and captures the group
for its children, so on CUDA with TP > 1 vLLM's own Ray workers (one GPU each, no CPU) land in
the group's bundles (vLLM reads it with `ray.util.get_current_placement_group()` in
EngineArgs.create_engine_config). With TP = 1 the actor itself holds bundle 0's GPU.

A bundle holds one CPU (what `selfplay.cluster.cpu_needs` counts), its share of the replica's
GPUs, and on CPU its share of the host memory the replica allocates at start-up (KV cache per
worker, the weights split over the workers; what `check_memory_fit` counts), so Ray places a
replica only on a node that can hold it. The groups are removed on shutdown.
"""

import time

import numpy as np
import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from selfplay.cluster import GIB, replica_host_memory_gib, weights_gib
from selfplay.generate.engine import VLLMEngine

PLACEMENT_TIMEOUT = 300.0  # seconds for Ray to place one replica's group before the stage fails


def replica_bundles(config, weights_gib: float = 0.0) -> list[dict[str, float]]:
    """The placement-group bundles of one replica: one per tensor-parallel worker, each with
    one CPU and its share of the replica's GPUs, or on CPU of its host memory."""
    tp = config.tensor_parallel_size
    bundle = {"CPU": 1.0}
    if config.num_gpus_per_replica > 0:
        bundle["GPU"] = config.num_gpus_per_replica / tp  # 1 with TP > 1 (cluster.check_replica_packing)
    else:
        bundle["memory"] = float(int(replica_host_memory_gib(config, weights_gib) * GIB / tp))
    return [dict(bundle) for _ in range(tp)]


def engine_actor_options(config, group) -> dict:
    """Ray options of a replica's engine actor: bundle 0's CPU, and its GPU when the actor runs
    the model itself (TP = 1); with TP > 1 on CUDA vLLM's workers take the GPUs."""
    gpus = config.num_gpus_per_replica if config.tensor_parallel_size == 1 else 0.0
    return dict(num_cpus=1, num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=0,
                    placement_group_capture_child_tasks=True))


class EnginePool:
    def __init__(self, model_path: str, config, dtype: str, seed: int, lora_rank: int | None = None):
        """`lora_rank`: train.lora.r, which turns on the engines' LoRA support (selfplay.generate.engine)."""
        from selfplay.models.adapter import config_folder

        self.device = "cuda" if config.num_gpus_per_replica > 0 else "cpu"
        self.store_logprobs = config.store_logprobs
        self.max_model_len = config.max_model_len
        self.bundles = replica_bundles(config, weights_gib(config_folder(model_path)))  # an adapter's: its base's
        start = time.perf_counter()
        self.groups, self.engines = [], []
        try:
            for replica in range(config.replicas):
                group = placement_group(self.bundles, strategy="STRICT_PACK")
                self.groups.append(group)
                self._wait_placed(group, replica)
                actor = ray.remote(**engine_actor_options(config, group))(VLLMEngine)
                self.engines.append(actor.remote(model_path, config, dtype=dtype, seed=seed + replica,
                                                 device=self.device, lora_rank=lora_rank))
            self.stats = ray.get([engine.stats.remote() for engine in self.engines])
        except BaseException:
            self.shutdown()
            raise
        for stats, group in zip(self.stats, self.groups):
            stats["resources"] = self.bundles
            stats["bundle_nodes"] = bundle_nodes(group)
        self.start_seconds = time.perf_counter() - start

    def _wait_placed(self, group, replica: int) -> None:
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT)
        if not ready:
            raise RuntimeError(f"generate: Ray could not place engine replica {replica} ({len(self.bundles)} x "
                               f"{self.bundles[0]} on one node) within {PLACEMENT_TIMEOUT:g} s; see `ray status`")

    def load_policy(self, model_path: str) -> float:
        return max(ray.get([engine.load_policy.remote(str(model_path)) for engine in self.engines]))

    def generate(self, prompt_token_ids: list[list[int]], seeds: list[int], **sampling) -> list[list[dict]]:
        """Shard prompts contiguously over replicas (array_split keeps the remainder) and
        return results in the original prompt order."""
        shards = np.array_split(np.arange(len(prompt_token_ids)), len(self.engines))
        futures = [engine.generate.remote([prompt_token_ids[i] for i in shard], [seeds[i] for i in shard],
                                          logprobs=self.store_logprobs, **sampling)
                   for engine, shard in zip(self.engines, shards) if len(shard)]
        return [samples for part in ray.get(futures) for samples in part]

    def shutdown(self) -> None:
        """Kill the engines, then remove their groups (which also ends vLLM's workers in them)."""
        for engine in self.engines:
            ray.kill(engine)
        for group in self.groups:
            remove_placement_group(group)
        self.engines, self.groups = [], []


def bundle_nodes(group) -> list[str]:
    """The node id of each bundle of a placed group (all the same under STRICT_PACK)."""
    table = placement_group_table(group)["bundles_to_node_id"]
    return [table[index] for index in sorted(table)]
