"""A tiny scalar reward model (AutoModelForSequenceClassification, num_labels=1), built from a seed.

Iterative DPO recipes judge with a reward model; tests cannot download one, so this writes a
2-layer Llama classifier with the tiny policy's tokenizer and chat template (reward models
score the chat-formatted conversation). pad_token_id is set in the config because the
classifier reads the score at each row's last non-pad token. The initializer range is larger
than the usual 0.02 so different responses get visibly different scores.
"""

import json
from pathlib import Path


def build_tiny_reward(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                      num_heads: int = 2, initializer_range: float = 0.2) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from selfplay.models.tiny_policy import build_tokenizer

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         max_position_embeddings=1024, num_labels=1, initializer_range=initializer_range,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "selfplay_tiny.json").write_text(json.dumps({"kind": "reward", "seed": seed}))
    return out_dir
