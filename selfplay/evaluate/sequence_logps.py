"""Summed response log-probs of sampled rows under a local HF causal LM checkpoint.

What kl.py needs: log pi(y | x) for each eval sample (prompt_token_ids, token_ids) under the
policy and under the initial policy. The model is loaded as the trainer loads a policy
(models.causal_lm.load_causal_lm: eager attention when the config soft-caps logits, as vLLM
computes them), in float32, on CUDA when there is one; the log-probs are the trainer's
(models.logps.response_logps over models.logps.pad_sequences, right-padded, prompt tokens
masked out). Nothing is truncated: a row longer than the model's context is an error, since
its log-prob would be of a different sequence. Rows are batched by a token budget, longest
first (annotate.judge_inputs.token_budget_batches), and returned in the input order.
"""

import numpy as np

# Right padding sits after every real token and is masked out, so its id is never read by a
# real position of a causal LM; 0 is a valid id of every vocabulary.
PAD_ID = 0


def sequence_logps(model_path, prompt_token_ids: list[list[int]], token_ids: list[list[int]],
                   batch_tokens: int = 16384, device: str | None = None) -> np.ndarray:
    """(N,) float64: sum over response tokens of log p(token | prefix) under the model in
    `model_path`, for rows (prompt_token_ids[k], token_ids[k]). An empty response gives 0."""
    import torch
    from transformers import AutoConfig

    from selfplay.judging.judge_inputs import token_budget_batches
    from selfplay.models.adapter import config_folder
    from selfplay.models.causal_lm import load_causal_lm
    from selfplay.models.logps import pad_sequences, response_logps

    if len(prompt_token_ids) != len(token_ids):
        raise ValueError(f"sequence_logps: {len(prompt_token_ids)} prompts for {len(token_ids)} responses")
    config = AutoConfig.from_pretrained(config_folder(model_path))  # a train.lora adapter's: its base's
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = getattr(config, "max_position_embeddings", None)
    lengths = [len(p) + len(r) for p, r in zip(prompt_token_ids, token_ids)]
    for row, length in enumerate(lengths):
        if context is not None and length > context:
            raise ValueError(f"sequence_logps: row {row} has {length} tokens, more than the context of "
                             f"{context} of {model_path}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(model_path, torch.float32).to(device).eval()
    out = np.zeros(len(lengths), dtype=np.float64)
    with torch.inference_mode():
        for batch in token_budget_batches(lengths, batch_tokens):
            tensors = pad_sequences([prompt_token_ids[r] for r in batch], [token_ids[r] for r in batch], PAD_ID)
            values = response_logps(model, *(t.to(device) for t in tensors))
            out[batch] = values.double().cpu().numpy()
    del model
    return out
