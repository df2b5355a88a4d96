"""The train stage: N DeepSpeed ranks as Ray actors in one placement group.

Rank 0 reports the rendezvous address; every rank joins, trains on its share of each global
batch and, for ZeRO-3, helps gather the weights that rank 0 saves as HF safetensors.
"""

import os

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from selfplay.train.trainer import TrainerRank


def train_policy(policy_path: str, reference_path: str, pairs_path: str, out_dir: str, config,
                 checkpoint_dir: str | None = None) -> dict:
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
        options = config.model_dump()
        results = ray.get([rank.train.remote(policy_path, reference_path, pairs_path, out_dir, options, checkpoint_dir)
                           for rank in ranks])
        ray.get([rank.shutdown.remote() for rank in ranks])
        return results[0]
    finally:
        for rank in ranks:
            ray.kill(rank)
        remove_placement_group(group)
