"""`selfplay make-tiny <family>` builds a policy with what sets its family apart."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from selfplay.conversation import prompt_token_ids
from selfplay.models import TINY_BUILDERS, resolve_model

from conftest import REPO

VLLM_CPU_HEAD_SIZES = {32, 64, 80, 96, 112, 128}
FAMILIES = ["mistral", "llama3", "gemma2", "qwen2"]


def weights(folder):
    with safe_open(folder / "model.safetensors", "pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_pairs_its_config_with_the_chat_tokenizer(family):
    folder = resolve_model(f"tiny:{family}")
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert head_size in VLLM_CPU_HEAD_SIZES
    assert config.num_key_value_heads < config.num_attention_heads               # GQA in every family
    assert config.vocab_size == len(tokenizer)
    bos = "<s>" if family == "gemma2" else ""   # Gemma-2's template writes the bos itself
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True) == bos + "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert (folder / "generation_config.json").is_file() and json.loads((folder / "selfplay_tiny.json").read_text())[
        "kind"] == family


def test_mistral_tokenizer_has_no_pad_token():
    folder = resolve_model("tiny:mistral")
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    assert AutoConfig.from_pretrained(folder).model_type == "mistral"


def test_llama3_stops_on_two_eos_ids():
    folder = resolve_model("tiny:llama3")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = GenerationConfig.from_pretrained(folder).eos_token_id
    assert eos == AutoConfig.from_pretrained(folder).eos_token_id
    assert tokenizer.convert_ids_to_tokens(eos) == ["<|end|>", "<|end_of_text|>"]
    assert AutoConfig.from_pretrained(folder).rope_parameters["rope_type"] == "llama3"


def test_gemma2_is_tied_and_capped_with_a_window_shorter_than_a_prompt():
    folder = resolve_model("tiny:gemma2")
    config = AutoConfig.from_pretrained(folder)
    assert config.tie_word_embeddings and "lm_head.weight" not in weights(folder)
    assert config.final_logit_softcapping and config.attn_logit_softcapping
    assert config.query_pre_attn_scalar != config.head_dim
    prompt = prompt_token_ids(AutoTokenizer.from_pretrained(folder), "Say something about topic 1.")
    assert config.sliding_window < len(prompt) and "sliding_attention" in config.layer_types


def test_qwen2_has_random_attention_biases_and_tied_embeddings():
    folder = resolve_model("tiny:qwen2")
    tensors = weights(folder)
    assert AutoConfig.from_pretrained(folder).tie_word_embeddings and "lm_head.weight" not in tensors
    biases = [key for key in tensors if key.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))]
    assert len(biases) == 3 * 2 and all(tensors[key].abs().max() > 0 for key in biases)


def test_the_build_is_a_function_of_the_seed(tmp_path):
    from selfplay.models.tiny_families import build_tiny_family

    first, again, other = (weights(build_tiny_family("qwen2", tmp_path / name, seed=seed))
                           for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_make_tiny_lists_the_kinds_on_a_wrong_one():
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "make-tiny", "gemma"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert all(kind in result.stderr for kind in TINY_BUILDERS)
