"""Ray start-up: a local cluster sized for the recipe, or an existing cluster by address.

Workers get the environment the engines need (in-process vLLM, no torch.compile on CPU,
the model cache) through the job's runtime_env, so the same recipe runs on a laptop and on
a cluster.
"""

import os

import ray

WORKER_ENV = ("SELFPLAY_CACHE", "TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def start_ray(address: str | None, min_cpus: int) -> None:
    if ray.is_initialized():
        return
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCH_COMPILE_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    env.update({k: os.environ[k] for k in WORKER_ENV if k in os.environ})
    runtime_env = {"env_vars": env}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    # Logical CPUs: engines and training ranks each hold one; on a small machine they take
    # turns with the real cores (the engine idles while ranks train).
    ray.init(num_cpus=max(os.cpu_count() or 1, min_cpus), include_dashboard=False,
             object_store_memory=512 * 1024 * 1024, runtime_env=runtime_env, log_to_driver=True,
             configure_logging=True, logging_level="WARNING")


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
