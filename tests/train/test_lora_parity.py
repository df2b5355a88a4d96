"""A trained LoRA adapter and the merged model every transformers-side reader loads are the same
policy: the summed log-probs of responses under the peft model (adapter unmerged) equal those of
the merged model saved and reloaded, on an untied Llama and on a tied-embedding Qwen2 (lm_head is
embed_tokens there), with the adapter on every projection and lm_head where the policy allows it
(recipes/lora-cpu.yaml adapts lm_head). And a train stage continues an adapter checkpoint as
saved: the trainer's model from the adapter folder scores as `load_causal_lm` of that folder
(the base with the adapter merged), and a fresh adapter on the base as the base.
vLLM serving the adapter is checked in tests/generate/test_lora_serving.py."""

import pytest
import torch

from selfplay.models import resolve_model
from selfplay.models.causal_lm import load_causal_lm, state_dict_for_save, tied_aliases
from selfplay.models.logps import pad_sequences, response_logps
from selfplay.train.trainer import _with_lora

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def logps(model, prompts, responses):
    input_ids, attention, response_mask = pad_sequences(prompts, responses, pad_id=0)
    with torch.no_grad():
        return response_logps(model, input_ids, attention, response_mask)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_merged_checkpoint_scores_as_the_adapter_does(family, tmp_path):
    path = resolve_model(f"tiny:{family}", seed=0)
    base = load_causal_lm(path, torch.float32)
    tied = bool(tied_aliases(base))
    assert tied == (family == "qwen2")
    targets = PROJECTIONS + (() if tied else ("lm_head",))
    model = _with_lora(base, (4, 8.0, 0.0, targets))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    generator = torch.Generator().manual_seed(1)
    vocab = base.config.vocab_size
    prompts = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in (5, 9, 3)]
    responses = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in (7, 4, 11)]
    adapter = logps(model.eval(), prompts, responses)
    assert not torch.allclose(adapter, logps(load_causal_lm(path, torch.float32), prompts, responses))
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path, state_dict=state_dict_for_save(merged, merged.state_dict()))
    reloaded = logps(load_causal_lm(tmp_path, torch.float32), prompts, responses)
    assert torch.allclose(reloaded, adapter, rtol=0, atol=1e-4), (reloaded, adapter)


def test_a_stage_continues_the_saved_adapter(tmp_path):
    from transformers import AutoTokenizer

    from selfplay.models.adapter import save_adapter
    from selfplay.recipe import TrainConfig
    from selfplay.train.settings import TrainSettings
    from selfplay.train.trainer import TrainerRank

    path = resolve_model("tiny:llama", seed=0)
    lora = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": [*PROJECTIONS, "lm_head"]}
    settings = TrainSettings.of(TrainConfig(loss="dpo", lora=lora))
    model = _with_lora(load_causal_lm(path, torch.float32), settings.lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    save_adapter(model, AutoTokenizer.from_pretrained(path), tmp_path / "adapter", (str(path), "digest"))
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 500, (n,), generator=generator).tolist() for n in (5, 9)]
    responses = [torch.randint(3, 500, (n,), generator=generator).tolist() for n in (7, 4)]
    rank = TrainerRank(0, 1)
    continued = rank._lora_model(str(tmp_path / "adapter"), None, settings, str(path))
    assert any(p.requires_grad for p in continued.parameters())  # the adapter trains on
    merged = logps(load_causal_lm(tmp_path / "adapter", torch.float32), prompts, responses)
    assert torch.allclose(logps(continued.eval(), prompts, responses), merged, rtol=0, atol=1e-4)
    fresh = rank._lora_model(str(path), None, settings, str(path))  # entering policy = the base: B is zero
    assert torch.equal(logps(fresh.eval(), prompts, responses), logps(load_causal_lm(path, torch.float32), prompts,
                                                                         responses))
    # a stage continues the entering adapter, so a train.lora that describes another one is refused by name
    other = TrainSettings.of(TrainConfig(loss="dpo", lora={**lora, "r": 8}))
    with pytest.raises(ValueError, match=r"train.lora: the entering policy .* is an adapter with r 4, alpha 8 on"):
        rank._lora_model(str(tmp_path / "adapter"), None, other, str(path))
