"""A training rank's copy of the weights it trained rebuilds the model its checkpoint loads as.

`causal_lm_with_weights` skips the random init and takes a state dict; the model it gives must
equal `load_causal_lm` of a checkpoint of the same weights: every weight and buffer (the rotary
tables are buffers the init does not write), the tie of a tied family, the attention kernel a
soft-capped family needs, and the logits. Families: the quickstart Llama, GQA Mistral/Llama-3,
Gemma-2 (tied, soft-capped) and Qwen2 (tied).
"""

import pytest
import torch

from selfplay.models import resolve_model
from selfplay.models.causal_lm import causal_lm_with_weights, load_causal_lm, state_dict_for_save


@pytest.mark.parametrize("kind", ["llama", "mistral", "llama3", "gemma2", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_held_in_memory_rebuild_the_checkpoints_model(kind, dtype, tmp_path):
    folder = resolve_model(f"tiny:{kind}")
    trained = load_causal_lm(folder, dtype)
    with torch.no_grad():  # a trained policy, not the checkpoint's: the rebuild must not read the folder's weights
        for param in trained.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    trained.save_pretrained(tmp_path, state_dict=state_dict_for_save(trained, trained.state_dict()))
    for extra in ("tokenizer.json", "tokenizer_config.json"):
        if (folder / extra).exists():
            (tmp_path / extra).write_bytes((folder / extra).read_bytes())

    held = {name: tensor.detach().clone() for name, tensor in trained.state_dict().items()}
    rebuilt = causal_lm_with_weights(folder, dtype, held)
    from_disk = load_causal_lm(tmp_path, dtype)

    assert rebuilt.config._attn_implementation == from_disk.config._attn_implementation
    for (name, ours), (other_name, theirs) in zip(rebuilt.state_dict().items(), from_disk.state_dict().items(), strict=True):
        assert name == other_name and ours.dtype == theirs.dtype == dtype and torch.equal(ours, theirs), name
    buffers = dict(from_disk.named_buffers())
    for name, buffer in rebuilt.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    tied = rebuilt.config.get_text_config().tie_word_embeddings
    assert (rebuilt.lm_head.weight.data_ptr() == rebuilt.get_input_embeddings().weight.data_ptr()) == tied
    ids = torch.randint(10, rebuilt.config.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, from_disk(ids).logits)
