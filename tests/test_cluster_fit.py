"""The cluster fit checks (selfplay.cluster.check_fit and its parts) over fake resource dicts,
shaped like ray.cluster_resources() and ray.nodes(): no Ray cluster is started."""

import json

import pytest

from selfplay.cluster import (
    GIB,
    attention_heads,
    check_cpu_fit,
    check_fit,
    check_memory_fit,
    check_replica_packing,
    check_tensor_parallel_heads,
    cpu_needs,
    gpu_needs,
    replicas_on_node,
)
from selfplay.recipe import Recipe, RecipeError


def recipe(**sections):
    return Recipe.model_validate({"prompts": {"path": "prompts.jsonl"}, **sections})


def node(cpus, gpus=0.0, memory_gib=64.0):
    return {"CPU": cpus, "GPU": gpus, "memory": memory_gib * GIB}


def cluster(*nodes):
    total = {}
    for each in nodes:
        for key, value in each.items():
            total[key] = total.get(key, 0.0) + value
    return {"total": total, "nodes": list(nodes)}


# The SPPO paper recipe's GPU layout: 8 one-GPU engines, a one-GPU PairRM, 8 one-GPU ranks.
SPPO_GPU = dict(generate={"replicas": 8, "num_gpus_per_replica": 1},
                annotate={"type": "pairrm", "path": "/models/PairRM", "num_gpus": 1},
                train={"world_size": 8, "num_gpus_per_rank": 1, "global_batch_size": 64})


def test_cpu_needs_count_workers_judges_and_ranks():
    assert cpu_needs(recipe(**SPPO_GPU)) == {"generate": 8, "annotate": 1, "evaluate": 0, "train": 8}
    tp = recipe(generate={"replicas": 2, "tensor_parallel_size": 4}, train={"world_size": 2, "global_batch_size": 64})
    assert cpu_needs(tp)["generate"] == 8                       # a replica is 4 tensor-parallel workers
    assert cpu_needs(recipe())["annotate"] == 0                 # the function judge runs in the driver


def test_judge_replicas_each_hold_their_gpus_and_a_cpu():
    two_judges = recipe(**{**SPPO_GPU, "annotate": {**SPPO_GPU["annotate"], "replicas": 2}})
    assert gpu_needs(two_judges)["annotate"] == 2 and cpu_needs(two_judges)["annotate"] == 2
    check_fit(two_judges, cluster(node(18, 8, memory_gib=1500)))
    with pytest.raises(RecipeError, match=r"= 18 CPUs .* has 17$"):         # 8 engines + 2 judges + 8 ranks
        check_fit(two_judges, cluster(node(17, 8, memory_gib=1500)))
    nine_judges = recipe(**{**SPPO_GPU, "annotate": {**SPPO_GPU["annotate"], "replicas": 9}})
    with pytest.raises(RecipeError, match=r"^annotate.replicas x annotate.num_gpus = 9 GPUs, but the Ray cluster has 8$"):
        check_fit(nine_judges, cluster(node(96, 8, memory_gib=1500)))


def test_cpus_held_together_must_fit():
    check_cpu_fit({"generate": 8, "annotate": 1, "evaluate": 0, "train": 8}, total=17)
    with pytest.raises(RecipeError, match=r"^generate.replicas x generate.tensor_parallel_size .* = 17 CPUs .* has 16$"):
        check_cpu_fit({"generate": 8, "annotate": 1, "evaluate": 0, "train": 8}, total=16)


@pytest.mark.parametrize("node_gpus, per_replica, fits", [
    (8, 1, 8), (8, 2, 4), (8, 4, 2), (8, 3, 2), (8, 0.5, 16), (8, 0.3, 24), (2, 4, 0), (7.9999999999, 1, 8)])
def test_replicas_on_node(node_gpus, per_replica, fits):
    assert replicas_on_node(node_gpus, per_replica) == fits


def test_tensor_parallel_groups_do_not_span_nodes():
    four_way = recipe(generate={"replicas": 4, "tensor_parallel_size": 4, "num_gpus_per_replica": 4})
    check_replica_packing(four_way, [node(32, 8), node(32, 8)])            # 2 replicas on each node
    with pytest.raises(RecipeError, match=r"^generate.replicas \(4\) x generate.num_gpus_per_replica \(4\): the Ray "
                                          r"nodes hold 3 such replicas"):
        check_replica_packing(four_way, [node(32, 8), node(32, 6)])       # 12 free GPUs, but 2 + 1 groups of 4
    eight_way = recipe(generate={"replicas": 1, "tensor_parallel_size": 8, "num_gpus_per_replica": 8})
    with pytest.raises(RecipeError, match=r"^generate.num_gpus_per_replica = 8 GPUs .* largest Ray node has 4"):
        check_replica_packing(eight_way, [node(32, 4), node(32, 4)])      # 8 GPUs in total, 4 per node


def test_tensor_parallel_workers_take_one_gpu_each():
    with pytest.raises(RecipeError, match=r"^generate.num_gpus_per_replica \(1\) must equal "
                                          r"generate.tensor_parallel_size \(2\)"):
        check_replica_packing(recipe(generate={"tensor_parallel_size": 2, "num_gpus_per_replica": 1}), [])


def test_cpu_tensor_parallel_group_needs_one_node_of_cpus():
    cpu_tp = recipe(generate={"tensor_parallel_size": 4})
    check_replica_packing(cpu_tp, [node(4)])
    with pytest.raises(RecipeError, match=r"^generate.tensor_parallel_size \(4\) CPUs for one replica"):
        check_replica_packing(cpu_tp, [node(2), node(2)])


@pytest.mark.parametrize("config, tp, error", [
    ({"num_attention_heads": 32, "num_key_value_heads": 8}, 4, None),          # Llama-3-8B: 32 / 8
    ({"num_attention_heads": 32, "num_key_value_heads": 8}, 16, None),         # KV heads replicated 2x
    ({"num_attention_heads": 28, "num_key_value_heads": 4}, 8, "attention heads of the policy (28)"),  # Qwen2.5-7B
    ({"num_attention_heads": 16, "num_key_value_heads": 6}, 4, "key/value heads of the policy (6)"),
    ({"num_attention_heads": 12}, 3, None),                                    # no KV field: MHA
    ({"text_config": {"num_attention_heads": 12}}, 8, "attention heads of the policy (12)"),
    ({"model_type": "odd"}, 3, None),                                          # does not say: nothing to check
])
def test_tensor_parallel_must_divide_heads(config, tp, error):
    if error is None:
        check_tensor_parallel_heads(tp, config)
    else:
        pattern = error.replace("(", ".").replace(")", ".")
        with pytest.raises(RecipeError, match=rf"^generate.tensor_parallel_size \({tp}\) .*{pattern}"):
            check_tensor_parallel_heads(tp, config)


def test_attention_heads_reads_kv_heads():
    assert attention_heads({"num_attention_heads": 32, "num_key_value_heads": 8}) == (32, 8)
    assert attention_heads({"num_attention_heads": 12}) == (12, 12)
    assert attention_heads({}) is None


def test_cpu_engines_host_memory():
    two = recipe(generate={"replicas": 2, "kv_cache_gib": 3})
    check_memory_fit(two, cluster(node(8, memory_gib=4), node(8, memory_gib=4)), policy_weights_gib=1.0)
    with pytest.raises(RecipeError, match=r"^generate.replicas x \(generate.kv_cache_gib \+ the policy's weights\) = "
                                          r"2 x 4.00 GiB of host memory, but the Ray cluster has 7.50 GiB"):
        check_memory_fit(two, cluster(node(8, memory_gib=4), node(8, memory_gib=3.5)), policy_weights_gib=1.0)
    with pytest.raises(RecipeError, match=r"^generate.kv_cache_gib \+ the policy's weights = 4.00 GiB for one replica, "
                                          r"but the largest Ray node has 3.00 GiB"):
        check_memory_fit(two, cluster(*[node(8, memory_gib=3)] * 4), policy_weights_gib=1.0)
    gpu = recipe(generate={"replicas": 2, "kv_cache_gib": 3, "num_gpus_per_replica": 1})
    check_memory_fit(gpu, cluster(node(8, 2, memory_gib=1)), policy_weights_gib=1.0)  # on the GPU: not host memory
    check_memory_fit(two, {"total": {"CPU": 8}, "nodes": [{"CPU": 8}]})              # no memory declared


def test_check_fit_on_one_8x80gb_node():
    node8 = cluster(node(96, 8, memory_gib=1500))
    check_fit(recipe(**SPPO_GPU), node8)
    with pytest.raises(RecipeError, match=r"^train.world_size x train.num_gpus_per_rank = 16 GPUs, but the Ray cluster "
                                          r"has 8$"):
        check_fit(recipe(**{**SPPO_GPU, "train": {"world_size": 16, "num_gpus_per_rank": 1}}), node8)
    with pytest.raises(RecipeError, match=r"= 17 CPUs .* has 16$"):
        check_fit(recipe(**SPPO_GPU), cluster(node(16, 8, memory_gib=1500)))


def test_check_fit_reads_the_policy_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 28, "num_key_value_heads": 4}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1024)
    qwen_tp8 = recipe(policy={"path": str(tmp_path)},
                      generate={"tensor_parallel_size": 8, "num_gpus_per_replica": 8})
    with pytest.raises(RecipeError, match=rf"must divide the number of attention heads of the policy "
                                          rf"\({tmp_path}/config.json\) \(28\)"):
        check_fit(qwen_tp8, cluster(node(96, 8)))
    check_fit(recipe(policy={"path": str(tmp_path)}, generate={"tensor_parallel_size": 4, "num_gpus_per_replica": 4}),
              cluster(node(96, 8)))
    check_fit(recipe(policy={"path": "/not/here"}, generate={"tensor_parallel_size": 8, "num_gpus_per_replica": 8}),
              cluster(node(96, 8)))                                  # no folder: nothing to read, passes
