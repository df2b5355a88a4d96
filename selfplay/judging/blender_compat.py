"""Lets llm-blender 0.0.2 (PairRM's own library, written for transformers 4) run on transformers 5.

Call `import_llm_blender()` instead of `import llm_blender`. It bridges what transformers 5
removed and llm-blender still uses, nothing more:

- `transformers.utils.hub.TRANSFORMERS_CACHE`: imported by llm-blender as the default
  `cache_dir` for hub downloads. We only load local folders, so huggingface_hub's cache path
  (what the old constant pointed at) is enough.
- `DebertaV2Tokenizer.batch_encode_plus`: PairRM's collator encodes lists with it; in
  transformers 5 `__call__` takes the same list and keyword arguments and returns the same
  `BatchEncoding`, so it forwards there.

It also hides vLLM while llm_blender is first imported: `llm_blender.blender` imports vLLM
only to detect it (for its generation helper, which we never call), and that import alone costs
15-25 s on CPU. A vLLM that is already loaded is left as it is.
"""

import sys


def _batch_encode_plus(self, batch_text_or_text_pairs, **kwargs):
    return self(batch_text_or_text_pairs, **kwargs)


def import_llm_blender():
    import huggingface_hub.constants
    import transformers.utils.hub
    from transformers import DebertaV2Tokenizer

    if not hasattr(transformers.utils.hub, "TRANSFORMERS_CACHE"):
        transformers.utils.hub.TRANSFORMERS_CACHE = huggingface_hub.constants.HF_HUB_CACHE
    if not hasattr(DebertaV2Tokenizer, "batch_encode_plus"):
        DebertaV2Tokenizer.batch_encode_plus = _batch_encode_plus

    hide_vllm = "vllm" not in sys.modules
    if hide_vllm:
        sys.modules["vllm"] = None  # makes `import vllm` raise ImportError
    try:
        import llm_blender
    finally:
        if hide_vllm:
            del sys.modules["vllm"]
    return llm_blender
