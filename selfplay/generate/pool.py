"""Data-parallel vLLM replicas as Ray actors, with prompts sharded over them (none dropped).

The pool is created once per run (recipe `generate.keep_engine: true`) and each iteration's
policy is loaded in place; with keep_engine false the engines are rebuilt per stage. A replica
runs on CUDA when the recipe gives it GPUs (`generate.num_gpus_per_replica > 0`), else on CPU.
"""

import time

import numpy as np
import ray

from selfplay.generate.engine import VLLMEngine


class EnginePool:
    def __init__(self, model_path: str, config, dtype: str, seed: int):
        actor = ray.remote(num_cpus=1, num_gpus=config.num_gpus_per_replica)(VLLMEngine)
        self.device = "cuda" if config.num_gpus_per_replica > 0 else "cpu"
        self.store_logprobs = config.store_logprobs
        self.max_model_len = config.max_model_len
        start = time.perf_counter()
        self.engines = [actor.remote(model_path, config, dtype=dtype, seed=seed + replica, device=self.device)
                        for replica in range(config.replicas)]
        self.stats = ray.get([engine.stats.remote() for engine in self.engines])
        self.start_seconds = time.perf_counter() - start

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
        for engine in self.engines:
            ray.kill(engine)
        self.engines = []
