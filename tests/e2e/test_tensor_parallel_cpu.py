"""Tensor parallelism inside one engine replica on the CPU build of vLLM.

A replica of tensor_parallel_size 2 is a placement group of two one-CPU bundles on one node, its
engine actor in bundle 0 driving two vLLM worker processes (shared-memory TP). On the tiny
Llama (4 attention heads, split 2 + 2) it samples the same tokens as a one-worker replica,
before and after an in-place policy reload.
"""

import pytest

pytestmark = pytest.mark.slow


def test_two_tensor_parallel_workers_sample_what_one_does(local_ray, tiny_policy):
    import ray

    from selfplay.generate.pool import EnginePool
    from selfplay.models import resolve_model
    from selfplay.recipe import GenerateConfig

    next_policy = str(resolve_model("tiny:llama", seed=1))   # same architecture, other weights
    prompts, seeds = [[1, 5, 9, 20], [1, 7, 7], [1, 30, 31, 32, 33]], [3, 4, 5]
    sampling = dict(n=2, temperature=1.0, top_p=1.0, max_tokens=8)
    tokens = {}
    for tp in (2, 1):
        pool = EnginePool(str(tiny_policy), GenerateConfig(tensor_parallel_size=tp, samples_per_prompt=2), "float32",
                          seed=0)
        try:
            stats = pool.stats[0]
            assert stats["tensor_parallel_size"] == tp and len(set(stats["worker_pids"])) == tp
            assert stats["bundle_nodes"] == [stats["node"]] * tp          # the TP group on one node
            first = pool.generate(prompts, seeds, **sampling)
            pool.load_policy(next_policy)
            tokens[tp] = [[s["token_ids"] for s in samples] for samples in first + pool.generate(prompts, seeds,
                                                                                                 **sampling)]
        finally:
            groups = [group.id.hex() for group in pool.groups]
            pool.shutdown()
        table = ray.util.placement_group_table()
        assert all(table[group]["state"] == "REMOVED" for group in groups)
    assert tokens[2] == tokens[1]
    assert tokens[1][:3] != tokens[1][3:]                                   # the reload changed the policy
