"""The vLLM options each device gets: vLLM's own fast defaults on CUDA, the CPU workarounds
(and no chunked prefill, which crashes seeded sampling on CPU) only on CPU, and the recipe's
engine_args passed through last. Also the validate-time check of engine_args' keys."""

import pytest

from selfplay.generate.engine import (
    CPU_ENV,
    check_engine_args,
    cpu_threads,
    engine_env,
    engine_options,
    worker_threads,
)
from selfplay.recipe import GenerateConfig, RecipeError, parse_recipe

CPU_ONLY = ("enforce_eager", "enable_chunked_prefill", "kv_cache_memory_bytes")


def options(device, **config):
    return engine_options(device, GenerateConfig(**config), "/models/p", "bfloat16", 7)


def test_cpu_gets_the_workarounds():
    got = options("cpu", kv_cache_gib=0.5, max_model_len=2048)
    assert got == {"model": "/models/p", "dtype": "bfloat16", "seed": 7, "max_model_len": 2048,
                   "tensor_parallel_size": 1, "enforce_eager": True, "enable_chunked_prefill": False,
                   "kv_cache_memory_bytes": 512 * 1024 * 1024}
    assert engine_env("cpu") == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCH_COMPILE_DISABLE": "1"} == CPU_ENV


def test_cuda_keeps_vllm_defaults():
    got = options("cuda", gpu_memory_utilization=0.8)
    assert got == {"model": "/models/p", "dtype": "bfloat16", "seed": 7, "max_model_len": 1024,
                   "tensor_parallel_size": 1, "gpu_memory_utilization": 0.8}
    assert not set(CPU_ONLY) & got.keys()        # CUDA graphs, compilation and chunked prefill stay on
    assert engine_env("cuda") == {}              # vLLM's engine-core process, torch.compile


def test_engine_args_pass_through_and_win():
    got = options("cpu", engine_args={"max_num_seqs": 64, "enforce_eager": False})
    assert got["max_num_seqs"] == 64 and got["enforce_eager"] is False
    assert options("cuda", engine_args={"enforce_eager": True})["enforce_eager"] is True


def test_cpu_threads_share_the_cores():
    assert cpu_threads(0, cores=8, replicas=1) == 8
    assert cpu_threads(0, cores=8, replicas=3) == 2
    assert cpu_threads(0, cores=2, replicas=4) == 1
    assert cpu_threads(3, cores=8, replicas=4) == 3


def test_engine_args_keys_are_checked_against_vllm():
    check_engine_args({"max_num_seqs": 8, "enable_prefix_caching": False})
    with pytest.raises(ValueError, match=r"^generate.engine_args.max_num_seq: not a field of vllm.EngineArgs"):
        check_engine_args({"max_num_seq": 8})
    with pytest.raises(ValueError, match=r"^generate.engine_args.max_model_len: set by the recipe field "
                                         r"generate.max_model_len"):
        check_engine_args({"max_model_len": 8})


def test_validate_names_a_bad_engine_arg_in_one_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    recipe = {"prompts": {"path": str(prompts)}, "generate": {"engine_args": {"swap_spaces": 4}}}
    with pytest.raises(RecipeError) as error:
        parse_recipe(recipe)
    assert str(error.value) == ("generate.engine_args.swap_spaces: not a field of vllm.EngineArgs "
                                "(see `vllm serve --help` or vllm/engine/arg_utils.py)")
    recipe["generate"]["engine_args"] = {"max_num_seqs": 4}
    assert parse_recipe(recipe).generate.engine_args == {"max_num_seqs": 4}


def test_tensor_parallel_replicas_name_their_executor():
    # CUDA: vLLM's Ray workers, one per GPU bundle of the replica's placement group
    got = options("cuda", tensor_parallel_size=2, num_gpus_per_replica=2)
    assert got["tensor_parallel_size"] == 2 and got["distributed_executor_backend"] == "ray"
    assert engine_env("cuda", 2) == {}
    # CPU: worker processes beside the engine (vLLM would pick "ray" inside a placement group)
    got = options("cpu", tensor_parallel_size=2)
    assert got["distributed_executor_backend"] == "mp" and got["enforce_eager"] is True
    assert engine_env("cpu", 2) == {**CPU_ENV, "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    # one worker: vLLM's in-process default, no executor named
    assert "distributed_executor_backend" not in options("cuda") | options("cpu")
    assert engine_env("cpu", 1) == CPU_ENV
    # the recipe's engine_args still win
    assert options("cuda", tensor_parallel_size=2, engine_args={"distributed_executor_backend": "mp"})[
        "distributed_executor_backend"] == "mp"


def test_tensor_parallel_workers_share_the_engine_threads():
    assert worker_threads(8, 1) == 8
    assert worker_threads(8, 2) == 4
    assert worker_threads(3, 2) == 1
    assert worker_threads(1, 4) == 1


@pytest.mark.parametrize(("r", "max_lora_rank"), [(1, 1), (4, 8), (8, 8), (9, 16), (64, 64), (100, 128)])
def test_train_lora_turns_on_vllm_lora_with_a_rank_vllm_accepts(r, max_lora_rank):
    """train.lora.r rounds up to a max_lora_rank vLLM accepts (vllm.config.lora.MaxLoRARanks);
    full fine-tuning passes no LoRA option at all (its engine options are unchanged)."""
    got = engine_options("cpu", GenerateConfig(), "/models/p", "float32", 0, lora_rank=r)
    assert {k: got[k] for k in ("enable_lora", "max_loras", "max_lora_rank")} == {
        "enable_lora": True, "max_loras": 1, "max_lora_rank": max_lora_rank}
    assert not {"enable_lora", "max_loras", "max_lora_rank"} & set(options("cpu"))
