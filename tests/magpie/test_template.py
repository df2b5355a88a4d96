"""The pre-query template derived from the chat templates of the Llama-3, Qwen2, Gemma-2, Mistral
and Phi-3 families (written out here as their tokenizer_config.json ships them; no download),
checked against Magpie's table (configs/model_configs.json, ../shared/ALGORITHMS.md) and, where the
template renders differently, against what it renders (said at each case)."""

import pytest

from selfplay.magpie.template import end_of_turn, pre_query_template, stop_at

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
PHI3_BOS = (  # Phi-3-mini-4k-instruct as first released
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\n' + "
    "message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == 'assistant') %}"
    "{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}")
PHI3 = (  # its later revision: no bos, a system role, eos after a conversation without generation prompt
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")


def tokenizer(template: str, bos: str, eos: str, specials: list[str]):
    """A word-level tokenizer that knows only the family's special tokens, with its chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = ["<unk>", bos, eos, *specials]
    vocab = {name: index for index, name in enumerate(dict.fromkeys(names))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(vocab))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>",
                                   chat_template=template)


FAMILIES = {
    # family: (chat template, bos, eos, other specials, expected pre-query template, end of turn)
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>"],
               "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    # Qwen2: the default system block the template adds, then Magpie's `<|im_start|>user\n`
    "qwen2": (QWEN2, "<|endoftext|>", "<|im_end|>", ["<|im_start|>"],
              "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n", "<|im_end|>"),
    # Gemma-2 renders one newline after `user` (Magpie's table: two)
    "gemma2": (GEMMA2, "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"],
               "<bos><start_of_turn>user\n", "<end_of_turn>"),
    # Mistral renders `<s>[INST] ` (Magpie's `<s> [INST] ` has a SentencePiece decode's space)
    "mistral": (MISTRAL, "<s>", "</s>", [], "<s>[INST] ", "[/INST]"),
    # Phi-3 renders `<s><|user|>\n` (Magpie's `<s> <|user|>\n`: the decode's space again)
    "phi3-bos": (PHI3_BOS, "<s>", "<|endoftext|>", ["<|user|>", "<|assistant|>", "<|end|>"],
                 "<s><|user|>\n", "<|end|>"),
    "phi3": (PHI3, "<s>", "<|endoftext|>", ["<|user|>", "<|assistant|>", "<|end|>", "<|system|>"],
             "<|user|>\n", "<|end|>"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_pre_query_template_of_each_family(family):
    template, bos, eos, specials, expected, closing = FAMILIES[family]
    tok = tokenizer(template, bos, eos, specials)
    assert pre_query_template(tok) == expected
    assert end_of_turn(tok) == closing


def test_qwen2_prefix_ends_with_magpies_template():
    template, bos, eos, specials, _, _ = FAMILIES["qwen2"]
    assert pre_query_template(tokenizer(template, bos, eos, specials)).endswith("<|im_start|>user\n")


def test_a_special_end_of_turn_stops_by_id_and_text_by_string():
    template, bos, eos, specials, _, _ = FAMILIES["llama3"]
    tok = tokenizer(template, bos, eos, specials)
    assert stop_at(tok) == {"stop_token_ids": [tok.convert_tokens_to_ids("<|eot_id|>")], "stop": []}
    template, bos, eos, specials, _, _ = FAMILIES["gemma2"]
    tok = tokenizer(template, bos, eos, specials)
    assert stop_at(tok) == {"stop_token_ids": [tok.convert_tokens_to_ids("<end_of_turn>"), tok.eos_token_id],
                            "stop": []}
    template, bos, eos, specials, _, _ = FAMILIES["mistral"]
    tok = tokenizer(template, bos, eos, specials)
    assert stop_at(tok) == {"stop_token_ids": [tok.eos_token_id], "stop": ["[/INST]"]}


def test_tiny_policy_has_a_usable_template(tiny_policy):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_policy)
    prefix = pre_query_template(tok)
    assert prefix == "<|user|>\n"
    assert stop_at(tok) == {"stop_token_ids": [tok.convert_tokens_to_ids("<|end|>")], "stop": []}
    ids = tok(prefix, add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>") and tok.decode(ids) == prefix


def test_a_template_without_user_text_or_prefix_is_one_line_error():
    tok = tokenizer("{{ 'nothing' }}", "<s>", "</s>", [])
    with pytest.raises(ValueError, match="renders the user text 0 times"):
        pre_query_template(tok)
    tok = tokenizer("{% for m in messages %}{{ m['content'] }}<e>{% endfor %}", "<s>", "</s>", ["<e>"])
    with pytest.raises(ValueError, match="renders nothing before the user text"):
        pre_query_template(tok)
    tok.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        pre_query_template(tok)
