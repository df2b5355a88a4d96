"""Magpie's pre-query template and end-of-turn stop, read off a tokenizer's chat template.

Magpie (magpie-align/magpie) gives an aligned chat model only the start of its chat template,
up to where the user's text begins, and samples: the model writes a user instruction. The paper
keeps a table of those prefixes per model family; here they are derived instead, so any chat
model works without a table entry:

1. render a one-turn conversation whose user text is a sentinel (`apply_chat_template`,
   tokenize=False, no generation prompt);
2. the pre-query template is the text before the sentinel, the end of the user turn is the text
   after it up to the first newline.

What the derivation gives is what the template renders, which differs from Magpie's table in
three places (tests/magpie/test_template.py checks each):
- Qwen2's template puts a default system block before a conversation without one
  (`<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n`). It stays in the prefix:
  the model sees it before every user turn it was tuned on, so the prefix is the one it answers
  after; the prefix still ends with Magpie's `<|im_start|>user\\n`.
- Gemma-2 renders `<bos><start_of_turn>user\\n` (one newline; Magpie's table has two).
- Mistral and Phi-3 (with bos) render `<s>[INST] ` and `<s><|user|>\\n`: Magpie's `<s> [INST] `
  and `<s> <|user|>\\n` carry the space a SentencePiece decode puts after `<s>`.
The prefix holds the template's own bos text, so it is tokenized without added special tokens.
"""

SENTINEL = "MAGPIE_USER_TEXT_SENTINEL_7f3a"


def _rendered(tokenizer) -> tuple[str, str]:
    """(text before the sentinel, text after it) of a one-turn conversation."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompts.magpie: the tokenizer has no chat template, so it has no pre-query template")
    text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False,
                                         add_generation_prompt=False)
    if text.count(SENTINEL) != 1:
        raise ValueError(f"prompts.magpie: the chat template renders the user text {text.count(SENTINEL)} times, "
                         f"not once; no pre-query template can be cut from it")
    before, after = text.split(SENTINEL)
    return before, after


def pre_query_template(tokenizer) -> str:
    """The chat template up to where the user's text starts, e.g. Llama-3's
    `<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n`."""
    before, _ = _rendered(tokenizer)
    if not before:
        raise ValueError("prompts.magpie: the chat template renders nothing before the user text; a model sampled "
                         "from nothing writes no instruction")
    return before


def end_of_turn(tokenizer) -> str:
    """What closes the user's turn: the rendered text after the user text, to its first newline,
    stripped (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`, `[/INST]`, `<|end|>`)."""
    _, after = _rendered(tokenizer)
    closing = after.strip().split("\n")[0].strip()
    if not closing:
        raise ValueError("prompts.magpie: the chat template renders nothing after the user text, so no end of turn "
                         "to stop at")
    return closing


def stop_at(tokenizer) -> dict:
    """vLLM stop settings for sampling an instruction: {"stop_token_ids": [...], "stop": [...]}.

    An end of turn that is one token of the vocabulary (a special token) stops by id: the engine
    drops special tokens from the text it checks stop strings against. Otherwise (Mistral's
    `[/INST]`) it is a stop string. The eos token stops too.
    """
    closing = end_of_turn(tokenizer)
    ids = tokenizer(closing, add_special_tokens=False).input_ids
    single = len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == closing
    stop_ids = [ids[0]] if single else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop_ids:
        stop_ids.append(tokenizer.eos_token_id)
    return {"stop_token_ids": stop_ids, "stop": [] if single else [closing]}
