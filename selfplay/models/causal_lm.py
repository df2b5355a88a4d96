"""Loading and saving a policy so that it stays the model its architecture defines.

Two rules every place that loads a policy for training or log-probs follows (trainer policy,
trainer reference, Selfie judge; the reward-model judge takes rule 1), so that they score the
model vLLM samples from:

1. Attention: transformers' sdpa and flash kernels ignore attention logit soft-capping
   (Gemma-2's `attn_logit_softcapping`); vLLM applies it. A config with soft-capping is loaded
   with the "eager" implementation, which computes tanh capping; everything else with "sdpa".
2. Saving: a tied model (Gemma-2, Qwen2: `lm_head.weight` is `embed_tokens.weight`) is saved
   without the alias. Copying a state dict breaks the tie, and transformers then writes both
   tensors; vLLM's strict loaders (Gemma-2) refuse the extra `lm_head.weight`.
"""

import shutil
from pathlib import Path

# Files of a policy folder that are neither weights nor tokenizer, kept beside every checkpoint
# trained from it (and beside an exported adapter: what its base had).
POLICY_EXTRAS = ("generation_config.json", "selfplay_tiny.json")


def attn_implementation(config) -> str:
    """'eager' when the (text) config asks for attention logit soft-capping, else 'sdpa'."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return "eager" if getattr(text_config, "attn_logit_softcapping", None) else "sdpa"


def load_causal_lm(path: str | Path, dtype):
    """AutoModelForCausalLM from a local folder with the attention implementation its config needs.
    A LoRA adapter folder (train.lora's checkpoints, models/adapter.py) gives its base with the
    adapter merged, so every reader of a policy scores the model the engines sample from."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from selfplay.models import adapter

    if adapter.is_adapter(path):
        return adapter.merged_causal_lm(path, dtype)
    config = AutoConfig.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation(config))


def causal_lm_with_weights(path: str | Path, dtype, weights: dict):
    """The model of the folder's config holding `weights` (a state dict of that model), as
    `load_causal_lm` would give it from a checkpoint of those weights: the training ranks' copy of
    the policy they trained last. Every weight is overwritten, so its random init is skipped."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(path)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation(config))
    model.tie_weights()  # the init that was skipped also ties (Gemma-2, Qwen2): one tensor for both keys again
    model.load_state_dict(weights, strict=True)
    return model.eval()


def tied_aliases(model) -> set[str]:
    """State-dict keys that are aliases of another parameter in `model` (e.g. lm_head.weight when tied)."""
    declared = getattr(model, "all_tied_weights_keys", None)
    if declared is None and hasattr(model, "get_expanded_tied_weights_keys"):
        declared = model.get_expanded_tied_weights_keys(all_submodels=True)
    return set(declared or {})


def state_dict_for_save(model, state: dict) -> dict:
    """CPU copies of `state` without tied aliases, ready for `model.save_pretrained(state_dict=...)`.

    Copies because save_pretrained empties the dict it is given (transformers 5) and the
    tensors may live on a GPU or be a ZeRO-3 gather.
    """
    aliases = tied_aliases(model)
    return {key: tensor.detach().cpu().clone() for key, tensor in state.items() if key not in aliases}


def copy_policy_extras(policy_path: str | Path, out_dir: Path) -> None:
    """Copy the POLICY_EXTRAS the policy folder has into a checkpoint trained from it."""
    for extra in POLICY_EXTRAS:
        if (Path(policy_path) / extra).exists():
            shutil.copy(Path(policy_path) / extra, out_dir / extra)
