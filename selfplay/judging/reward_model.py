"""Reward-model judge: one scalar score per response (iterative DPO, RLHFlow style).

The model is any local `AutoModelForSequenceClassification` folder with one label. Each
response is scored as the conversation [user: prompt, assistant: response] rendered with the
reward model's own chat template (reward models are trained on that format, not raw text),
tokenized without extra special tokens (the template carries them). The score is read where
the model's classifier reads it: the last token that is not the pad token.

Conversations longer than the model's context (max_position_embeddings) are cut to it,
keeping their start, so an over-long response is judged on its beginning. Rows are batched
by a token budget across prompts (judge_inputs.token_budget_batches).
"""

import numpy as np
import torch
from tqdm import tqdm

from selfplay.conversation import Prompt, chat_text, messages_of
from selfplay.judging.base import Judge, Judgment
from selfplay.judging.judge_inputs import (
    check_inputs,
    check_model_folder,
    require_chat_template,
    token_budget_batches,
    torch_dtype,
)


class RewardModelJudge(Judge):
    def __init__(self, path: str, batch_tokens: int = 8192, device: str = "cpu", dtype: str = "float32"):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from selfplay.models.causal_lm import attn_implementation

        weights_dtype = torch_dtype(dtype, "reward model")
        self.path = check_model_folder(path, "reward model")
        self.batch_tokens = batch_tokens
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        require_chat_template(self.tokenizer, self.path, "reward model")
        # eager attention for a soft-capped backbone (Gemma-2 reward models), as causal_lm.py explains
        attention = attn_implementation(AutoConfig.from_pretrained(self.path))
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=weights_dtype,
                                                                        attn_implementation=attention)
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model: {self.path}/config.json has num_labels={self.model.config.num_labels}; "
                             f"a scalar reward model has 1")
        # The classifier reads each row's last token that is not config.pad_token_id, so rows are
        # padded with exactly that id; without one it refuses batches, so one is set.
        if self.model.config.pad_token_id is None:
            tokenizer_pad = self.tokenizer.pad_token_id
            self.model.config.pad_token_id = tokenizer_pad if tokenizer_pad is not None else self.tokenizer.eos_token_id
        self.pad_id = self.model.config.pad_token_id
        self.max_length = getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.model.to(device).eval()

    def _conversation(self, prompt: Prompt, response: str) -> str:
        """The whole chat, the response as its last assistant turn, in the reward model's template."""
        return chat_text(self.tokenizer, messages_of(prompt) + [{"role": "assistant", "content": response}], False)

    def judge(self, prompts: list[Prompt], responses: list[list[str]]) -> list[Judgment]:
        check_inputs(prompts, responses)
        rows = [(p, k) for p, group in enumerate(responses) for k in range(len(group))]
        texts = [self._conversation(prompts[p], responses[p][k]) for p, k in rows]
        sequences = [ids[: self.max_length] for ids in self.tokenizer(texts, add_special_tokens=False).input_ids]
        scores = [np.zeros(len(group)) for group in responses]
        progress = tqdm(total=len(rows), desc="reward model", unit="response", leave=False)
        with torch.inference_mode():
            for batch in token_budget_batches([len(s) for s in sequences], self.batch_tokens):
                width = max(len(sequences[r]) for r in batch)
                input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for b, r in enumerate(batch):
                    input_ids[b, :len(sequences[r])] = torch.tensor(sequences[r])
                    attention_mask[b, :len(sequences[r])] = 1
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=attention_mask.to(self.device)).logits[:, 0]
                for r, value in zip(batch, logits.float().cpu().numpy()):
                    p, k = rows[r]
                    scores[p][k] = value
                progress.update(len(batch))
        progress.close()
        return [Judgment(scores=group_scores) for group_scores in scores]
