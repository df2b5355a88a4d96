"""A vLLM engine that samples K responses per prompt and takes new policies in place.

Run as a Ray actor (one per data-parallel replica). The engine is the largest fixed cost of a
small iteration, so it lives for the whole run: `load_policy(path)` swaps in a new checkpoint
with vLLM's `reload_weights` (same architecture), instead of restarting the engine.
"""

import os
import time


class VLLMEngine:
    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0, max_model_len: int = 1024,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5, kv_cache_gib: float = 0.25):
        # In-process engine: 6-7 s to start on CPU instead of 35-45 s (ENVIRONMENT.md), and no
        # torch.compile (its first logprobs call alone costs 20-90 s on CPU).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
        import torch
        from vllm import LLM

        start = time.perf_counter()
        options = dict(model=str(model_path), dtype=dtype, seed=seed, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size, enforce_eager=True)
        if torch.cuda.is_available():
            options["gpu_memory_utilization"] = gpu_memory_utilization
        else:  # the default asks for 92% of RAM on CPU and fails
            options["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        self.llm = LLM(**options)
        self.loaded_policy = str(model_path)
        self.start_seconds = time.perf_counter() - start
        self.reloads = 0

    def load_policy(self, model_path: str) -> float:
        """Swap in the weights of `model_path` if they are not the loaded ones; returns seconds."""
        if str(model_path) == self.loaded_policy:
            return 0.0
        start = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model_path)})
        self.loaded_policy = str(model_path)
        self.reloads += 1
        return time.perf_counter() - start

    def generate(self, prompt_token_ids: list[list[int]], seeds: list[int], n: int, temperature: float,
                 top_p: float, max_tokens: int) -> list[list[dict]]:
        """For each prompt, n samples (one request with n=K shares the prompt prefix).

        Each prompt's request has its own seed, so its samples do not depend on which replica
        or batch it landed in.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                                 logprobs=0) for seed in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids],
                                    sampling_params=params, use_tqdm=False)
        results = []
        for output in outputs:
            samples = []
            for completion in sorted(output.outputs, key=lambda c: c.index):
                token_ids = list(completion.token_ids)
                logprobs = [step[token].logprob for step, token in zip(completion.logprobs or [], token_ids)]
                samples.append({"text": completion.text, "token_ids": token_ids, "logprobs": logprobs,
                                "finish_reason": completion.finish_reason})
            results.append(samples)
        return results

    def stats(self) -> dict:
        return {"start_seconds": self.start_seconds, "reloads": self.reloads, "loaded_policy": self.loaded_policy}
