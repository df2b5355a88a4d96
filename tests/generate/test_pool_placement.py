"""Each engine replica's placement group: one bundle per tensor-parallel worker, holding what the
cluster fit checks count (selfplay.cluster), and the engine actor in bundle 0 capturing the
group so that vLLM's own Ray workers (CUDA, TP > 1) land in it."""

import pytest

from selfplay.cluster import GIB, cpu_needs, replica_host_memory_gib
from selfplay.generate.pool import engine_actor_options, replica_bundles
from selfplay.recipe import GenerateConfig, parse_recipe


def test_cpu_replica_bundles_hold_a_cpu_and_their_share_of_host_memory():
    assert replica_bundles(GenerateConfig(kv_cache_gib=0.5), weights_gib=0.25) == [{"CPU": 1.0, "memory": 0.75 * GIB}]
    two = replica_bundles(GenerateConfig(kv_cache_gib=0.5, tensor_parallel_size=2), weights_gib=1.0)
    assert two == [{"CPU": 1.0, "memory": 1.0 * GIB}] * 2      # a KV cache each, half the weights each


def test_gpu_replica_bundles_hold_one_gpu_per_worker():
    assert replica_bundles(GenerateConfig(num_gpus_per_replica=4, tensor_parallel_size=4), 14.0) == \
        [{"CPU": 1.0, "GPU": 1.0}] * 4                          # weights and KV cache live on the GPU
    assert replica_bundles(GenerateConfig(num_gpus_per_replica=0.5)) == [{"CPU": 1.0, "GPU": 0.5}]  # a shared GPU


@pytest.mark.parametrize("generate", [{"tensor_parallel_size": 2, "kv_cache_gib": 0.5},
                                      {"tensor_parallel_size": 4, "num_gpus_per_replica": 4, "replicas": 2},
                                      {"replicas": 3, "kv_cache_gib": 2.0}])
def test_bundles_hold_what_the_fit_checks_count(generate, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    recipe = parse_recipe({"prompts": {"path": str(prompts)}, "generate": generate})
    config, weights = recipe.generate, 0.3
    bundles = replica_bundles(config, weights)
    assert config.replicas * sum(b["CPU"] for b in bundles) == cpu_needs(recipe)["generate"]
    assert sum(b.get("GPU", 0.0) for b in bundles) == config.num_gpus_per_replica
    if config.num_gpus_per_replica == 0:
        assert sum(b["memory"] for b in bundles) == pytest.approx(replica_host_memory_gib(config, weights) * GIB, abs=4)


def test_the_engine_sits_in_bundle_zero_and_captures_the_group():
    group = object()  # the strategy only carries the group
    one = engine_actor_options(GenerateConfig(num_gpus_per_replica=1), group)
    assert (one["num_cpus"], one["num_gpus"]) == (1, 1)         # TP 1: the engine runs the model itself
    strategy = one["scheduling_strategy"]
    assert strategy.placement_group is group and strategy.placement_group_bundle_index == 0
    assert strategy.placement_group_capture_child_tasks is True
    four = engine_actor_options(GenerateConfig(num_gpus_per_replica=4, tensor_parallel_size=4), group)
    assert (four["num_cpus"], four["num_gpus"]) == (1, 0)       # vLLM's 4 Ray workers take the 4 GPUs
    assert engine_actor_options(GenerateConfig(), group)["num_gpus"] == 0
