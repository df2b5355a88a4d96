"""A tiny Llama policy with a locally trained BPE tokenizer and a chat template.

No model hub is reachable in tests or on a laptop, so the quickstart policy is built here,
deterministically from a seed: the tokenizer is trained on Python standard-library sources
(always on disk), the weights are a random init from `torch.manual_seed(seed)`.
Head size 32 is the smallest the vLLM CPU attention backend accepts.
"""

import json
import sysconfig
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "<|end|>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
STDLIB_FILES = ["textwrap.py", "argparse.py", "json/__init__.py", "string.py", "calendar.py",
                "difflib.py", "pathlib.py", "dataclasses.py", "functools.py", "random.py"]


def _training_text() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text(encoding="utf-8") for name in STDLIB_FILES if (stdlib / name).exists()]
    prompts = Path(__file__).resolve().parent.parent.parent / "recipes" / "data" / "quickstart_prompts.jsonl"
    if prompts.exists():
        texts.append(prompts.read_text(encoding="utf-8"))
    return texts


def build_tokenizer(vocab_size: int = 2048):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="<|end|>", unk_token="<unk>", chat_template=CHAT_TEMPLATE)


def build_tiny_policy(out_dir: str | Path, seed: int = 0, hidden_size: int = 128, num_layers: int = 2,
                      num_heads: int = 4, vocab_size: int = 2048) -> Path:
    """Write an HF folder (config, safetensors weights, tokenizer with chat template) to out_dir."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(vocab_size)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         max_position_embeddings=1024, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "selfplay_tiny.json").write_text(json.dumps({"kind": "llama", "seed": seed}))
    return out_dir
