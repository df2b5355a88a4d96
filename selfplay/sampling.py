"""What decides what an engine samples, shared by every stage that samples (generate, magpie).

- `request_seed`: one request's seed, from (run seed, iteration, prompt or candidate, purpose),
  so a sample does not depend on which replica or batch it landed in;
- `ENGINE_KEYS`: the `generate` settings that change the samples (a changed timeout or thread
  count does not), recorded in the sampling stages' configs.
"""

import zlib

ENGINE_KEYS = {"replicas", "tensor_parallel_size", "max_model_len", "long_prompts", "store_logprobs", "engine_args"}


def request_seed(run_seed: int, iteration: int, prompt_id: int, purpose: str) -> int:
    return zlib.crc32(f"{run_seed}/{iteration}/{prompt_id}/{purpose}".encode()) & 0x7FFFFFFF
