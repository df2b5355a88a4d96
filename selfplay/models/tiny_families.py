"""Tiny random policies of the families the papers train, with the tiny policy's tokenizer.

Each keeps what sets its family apart, at small dimensions (head size 32, the smallest the
vLLM CPU attention backend accepts), so a run exercises the paths a real model takes:

- mistral: grouped-query attention (2 KV heads for 4 query heads), a tokenizer with no pad token.
- llama3:  GQA, llama3 RoPE scaling, two eos ids (end of turn and end of text) in the config
           and the generation config, as Llama-3-Instruct ships.
- gemma2:  tied embeddings, final and attention logit soft-capping, a sliding window (8 tokens,
           shorter than a prompt, so it matters) on alternate layers, query_pre_attn_scalar
           different from the head size, embeddings scaled by sqrt(hidden); Gemma-2's chat
           template rules (a bos in the template, no system role: it raises on one, turns
           must alternate, contents trimmed) on the tiny tokenizer's turn tokens.
- qwen2:   attention q/k/v bias (drawn at random: zeros would hide a loader that drops them),
           tied embeddings.

The initializer range is 0.1 rather than 0.02 so logits, attention scores and soft-caps are
large enough that a wrong attention or a dropped bias shows in log-probs.
"""

import json
from pathlib import Path

END_OF_TEXT = "<|end_of_text|>"
INITIALIZER_RANGE = 0.1
# Gemma-2-it's template, its turn markers swapped for the tiny tokenizer's special tokens
GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] | trim }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
DIMS = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, initializer_range=INITIALIZER_RANGE)


def _mistral(tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer.pad_token = None
    config = MistralConfig(vocab_size=len(tokenizer), **DIMS, head_dim=32, sliding_window=None,
                           tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=None)
    return MistralForCausalLM, config, [tokenizer.eos_token_id]


def _llama3(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer.add_special_tokens({"additional_special_tokens": [END_OF_TEXT]})
    eos_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TEXT)]
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
    config = LlamaConfig(vocab_size=len(tokenizer), **DIMS, rope_parameters=rope, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM, config, eos_ids


def _gemma2(tokenizer):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=len(tokenizer), **DIMS, head_dim=32, query_pre_attn_scalar=64,
                          sliding_window=8, final_logit_softcapping=5.0, attn_logit_softcapping=5.0,
                          tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    tokenizer.chat_template = GEMMA2_CHAT_TEMPLATE
    return Gemma2ForCausalLM, config, [tokenizer.eos_token_id]


def _qwen2(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), **DIMS, tie_word_embeddings=True, use_sliding_window=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM, config, [tokenizer.eos_token_id]


FAMILIES = {"mistral": _mistral, "llama3": _llama3, "gemma2": _gemma2, "qwen2": _qwen2}


def build_tiny_family(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write an HF folder (config, generation config, safetensors, tokenizer with chat template)."""
    import torch
    from transformers import GenerationConfig

    from selfplay.models.tiny_policy import build_tokenizer

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    model_cls, config, eos_ids = FAMILIES[family](tokenizer)
    config.dtype = "float32"
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_proj.bias"):
                parameter.normal_(std=INITIALIZER_RANGE)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0])
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "selfplay_tiny.json").write_text(json.dumps({"kind": family, "seed": seed}))
    return out_dir
