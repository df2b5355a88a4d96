"""Policies load with the attention their architecture defines and save without tied aliases."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, Gemma2Config, LlamaConfig, Qwen2Config

from selfplay.models import resolve_model
from selfplay.models.causal_lm import attn_implementation, load_causal_lm, state_dict_for_save


def saved_keys(folder):
    with safe_open(folder / "model.safetensors", "pt") as weights:
        return set(weights.keys())


@pytest.mark.parametrize("config, expected", [
    (Gemma2Config(), "eager"),                                   # attention soft-capping 50.0 by default
    (Gemma2Config(attn_logit_softcapping=None), "sdpa"),         # Gemma-2 with the cap switched off
    (LlamaConfig(), "sdpa"),
    (Qwen2Config(), "sdpa"),
])
def test_attention_implementation_follows_the_config(config, expected):
    assert attn_implementation(config) == expected


def test_gemma2_loads_with_the_cap_that_sdpa_would_drop():
    """The tiny Gemma-2's capped attention differs from sdpa's uncapped one by far more than
    float error: loading it with sdpa would train a different model than vLLM samples from."""
    folder = resolve_model("tiny:gemma2")
    ids = torch.arange(3, 43).unsqueeze(0)  # 40 tokens: past the 8-token sliding window
    loaded = load_causal_lm(folder, torch.float32)
    assert loaded.config._attn_implementation == "eager"
    eager = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    sdpa = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        ours, capped, uncapped = (m(ids).logits.log_softmax(-1) for m in (loaded, eager, sdpa))
    torch.testing.assert_close(ours, capped, rtol=0, atol=1e-6)
    assert (capped - uncapped).abs().max() > 1e-2


@pytest.mark.parametrize("kind, tied", [("qwen2", True), ("gemma2", True), ("mistral", False)])
def test_save_writes_each_tensor_once_and_reloads_tied(kind, tied, tmp_path):
    folder = resolve_model(f"tiny:{kind}")
    model = load_causal_lm(folder, torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.5)   # a trained embedding: the head must follow it
    # A copy of the state dict, as the trainer's ZeRO-0 and ZeRO-3 paths both hand over.
    state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    model.save_pretrained(tmp_path, state_dict=state_dict_for_save(model, state), safe_serialization=True)
    assert ("lm_head.weight" in saved_keys(tmp_path)) is not tied
    assert saved_keys(tmp_path) | ({"lm_head.weight"} if tied else set()) == set(model.state_dict())
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is tied
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight, rtol=0, atol=0)
    if tied:
        assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()


def test_untied_llama_keeps_its_head(tmp_path):
    model = load_causal_lm(resolve_model("tiny:llama"), torch.float32)
    kept = state_dict_for_save(model, model.state_dict())
    assert set(kept) == set(model.state_dict()) and not AutoConfig.from_pretrained(
        resolve_model("tiny:llama")).tie_word_embeddings
