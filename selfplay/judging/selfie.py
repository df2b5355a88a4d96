"""Selfie / SPA judge: the policy scores its own samples by the implicit DPO reward.

score(y) = logp_policy(y | x) - logp_reference(y | x), both SUMMED over the response tokens
(docs/algorithms.md), with a FIXED reference (the SFT model in SPA). In a run the judge scores the
token ids the sampler produced (`token_ids=`), the very sequences the train stage then trains
on, so the judgment is the implicit reward of the sample itself. Given text alone, it rebuilds
them: the prompt (its whole conversation) rendered with the policy tokenizer's chat template
plus the generation prompt (selfplay/conversation.py), then the response's tokens and the
end-of-sequence token, as TRL's DPO tokenization (and a generation that stopped by itself) has
it; a tokenizer can split text differently than the sampler did, which is why runs pass the ids. Both models must share that tokenizer.

A prompt that alone fills the context (the smaller max_position_embeddings of the two models)
is rejected; a response that does not fit after its prompt is cut at the end (the TRL
convention of selfplay.models.logps.pad_sequences), so only its beginning is scored. Rows are
batched by a token budget across prompts; each batch runs through the policy, then the reference.
"""

import numpy as np
import torch
from tqdm import tqdm

from selfplay.conversation import Prompt, prompt_token_ids
from selfplay.judging.base import Judge, Judgment
from selfplay.judging.judge_inputs import (
    check_inputs,
    check_model_folder,
    require_chat_template,
    token_budget_batches,
    torch_dtype,
)
from selfplay.models.logps import pad_sequences, response_logps


class SelfieJudge(Judge):
    takes_token_ids = True  # the sampled ids (see the module docstring)

    def __init__(self, policy_path: str, reference_path: str, batch_tokens: int = 8192, device: str = "cpu",
                 dtype: str = "float32"):
        from transformers import AutoTokenizer

        from selfplay.models.causal_lm import load_causal_lm

        weights_dtype = torch_dtype(dtype, "selfie")
        self.policy_path = check_model_folder(policy_path, "selfie policy")
        self.reference_path = check_model_folder(reference_path, "selfie reference")
        self.batch_tokens = batch_tokens
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(self.policy_path)
        require_chat_template(self.tokenizer, self.policy_path, "selfie policy")
        if AutoTokenizer.from_pretrained(self.reference_path).get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"selfie reference: the tokenizer in {self.reference_path} differs from the policy's "
                             f"in {self.policy_path}; the log-ratio needs one tokenization")
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.eos = [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id]
        self.policy, self.reference = (load_causal_lm(path, weights_dtype).to(device).eval()
                                       for path in (self.policy_path, self.reference_path))
        self.max_length = min(model.config.max_position_embeddings for model in (self.policy, self.reference))

    def _sequences(self, prompts, responses, token_ids):
        """Prompt ids per prompt and response ids per (prompt, k) row, from the sampler or from text."""
        rows = [(p, k) for p, group in enumerate(responses) for k in range(len(group))]
        if token_ids is None:
            prompt_ids = [prompt_token_ids(self.tokenizer, prompt) for prompt in prompts]
            texts = [responses[p][k] for p, k in rows]
            response_ids = [ids + self.eos for ids in self.tokenizer(texts, add_special_tokens=False).input_ids]
        else:
            if len(token_ids) != len(prompts) or any(len(ids) != len(group) for (_, ids), group
                                                     in zip(token_ids, responses)):
                raise ValueError("judge: token_ids must hold (prompt ids, one id list per response) for every prompt")
            prompt_ids = [list(ids) for ids, _ in token_ids]
            response_ids = [list(token_ids[p][1][k]) for p, k in rows]
        for row, ids in enumerate(prompt_ids):
            if len(ids) >= self.max_length:
                raise ValueError(f"judge: prompts[{row}] has {len(ids)} tokens with its chat template; "
                                 f"no room for a response in the models' context of {self.max_length}")
        return rows, prompt_ids, response_ids

    def judge(self, prompts: list[Prompt], responses: list[list[str]],
              token_ids: list[tuple[list[int], list[list[int]]]] | None = None) -> list[Judgment]:
        """token_ids: per prompt, (its prompt ids, the ids of each response) as sampled."""
        check_inputs(prompts, responses)
        rows, prompt_ids, response_ids = self._sequences(prompts, responses, token_ids)
        lengths = [min(len(prompt_ids[p]) + len(ids), self.max_length) for (p, _), ids in zip(rows, response_ids)]
        scores = [np.zeros(len(group)) for group in responses]
        progress = tqdm(total=len(rows), desc="selfie", unit="response", leave=False)
        with torch.inference_mode():
            for batch in token_budget_batches(lengths, self.batch_tokens):
                tensors = pad_sequences([prompt_ids[rows[r][0]] for r in batch], [response_ids[r] for r in batch],
                                        self.pad_id, max_length=self.max_length)
                tensors = [t.to(self.device) for t in tensors]
                log_ratio = response_logps(self.policy, *tensors) - response_logps(self.reference, *tensors)
                for r, value in zip(batch, log_ratio.cpu().numpy()):
                    p, k = rows[r]
                    scores[p][k] = value
                progress.update(len(batch))
        progress.close()
        return [Judgment(scores=group_scores) for group_scores in scores]
