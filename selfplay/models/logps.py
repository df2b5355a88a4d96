"""Summed token log-probabilities of responses under a causal LM (the quantity every loss uses).

`logp(y | x)` is the SUM over response tokens (docs/algorithms.md), never the mean.
"""

import torch


def response_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over the positions where response_mask is 1.

    input_ids, attention_mask, response_mask: (B, T); response_mask marks response tokens
    (prompt and padding are 0). Returns (B,) float32.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * response_mask[:, 1:].to(token_logps.dtype)).sum(-1)


def pad_sequences(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                  max_length: int | None = None, max_prompt_length: int | None = None):
    """Right-pad prompt+response pairs into (input_ids, attention_mask, response_mask).

    Prompts longer than max_prompt_length keep their last tokens; the response is then cut so
    the whole fits max_length (the TRL convention).
    """
    rows = []
    for prompt, response in zip(prompt_ids, response_ids):
        prompt = list(prompt)
        response = list(response)
        if max_prompt_length is not None and len(prompt) > max_prompt_length:
            prompt = prompt[-max_prompt_length:]
        if max_length is not None:
            response = response[: max(0, max_length - len(prompt))]
        rows.append((prompt, response))
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (prompt, response) in enumerate(rows):
        n_prompt, n = len(prompt), len(prompt) + len(response)
        input_ids[row, :n] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[row, :n] = 1
        response_mask[row, n_prompt:n] = 1
    return input_ids, attention_mask, response_mask
