"""Data-parallel vLLM replicas as Ray actors, with prompts sharded over them (none dropped).

The pool is created once per run (recipe `generate.keep_engine: true`) and each iteration's
policy is loaded in place; with keep_engine false the engines are rebuilt per stage.
"""

import time

import numpy as np
import ray

from selfplay.generate.engine import VLLMEngine


class EnginePool:
    def __init__(self, model_path: str, config, dtype: str, seed: int):
        actor = ray.remote(num_cpus=1, num_gpus=config.num_gpus_per_replica)(VLLMEngine)
        start = time.perf_counter()
        self.engines = [actor.remote(model_path, dtype=dtype, seed=seed + replica, max_model_len=config.max_model_len,
                                     tensor_parallel_size=config.tensor_parallel_size,
                                     gpu_memory_utilization=config.gpu_memory_utilization,
                                     kv_cache_gib=config.kv_cache_gib)
                        for replica in range(config.replicas)]
        ray.get([engine.stats.remote() for engine in self.engines])
        self.start_seconds = time.perf_counter() - start

    def load_policy(self, model_path: str) -> float:
        return max(ray.get([engine.load_policy.remote(str(model_path)) for engine in self.engines]))

    def generate(self, prompt_token_ids: list[list[int]], seeds: list[int], **sampling) -> list[list[dict]]:
        """Shard prompts contiguously over replicas (array_split keeps the remainder) and
        return results in the original prompt order."""
        shards = np.array_split(np.arange(len(prompt_token_ids)), len(self.engines))
        futures = [engine.generate.remote([prompt_token_ids[i] for i in shard], [seeds[i] for i in shard], **sampling)
                   for engine, shard in zip(self.engines, shards) if len(shard)]
        return [samples for part in ray.get(futures) for samples in part]

    def shutdown(self) -> None:
        for engine in self.engines:
            ray.kill(engine)
        self.engines = []
