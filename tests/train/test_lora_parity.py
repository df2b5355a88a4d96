"""A trained LoRA adapter and the merged checkpoint the train stage saves are the same policy:
the summed log-probs of responses under the peft model (adapter unmerged) equal those of the
saved-and-reloaded merged folder, which is what the engines and the next stage read. On an
untied Llama and on a tied-embedding Qwen2 (lm_head is embed_tokens there), with the adapter on
every projection and lm_head where the policy allows it (recipes/lora-cpu.yaml adapts lm_head)."""

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
