"""Prompts as conversations, and the one function that turns a prompt into what a model reads.

A prompt is a string (one user turn: a `prompts.field` column) or a conversation (a
`prompts.messages_field` column): a list of {"role", "content"} messages, an optional system
message first, then user and assistant turns alternating, ending with the user turn the policy
answers. Strings stay strings everywhere (samples, digests), so a run whose prompts are plain
text keeps the digests it had before conversations existed.

`prompt_token_ids` is the only place a prompt becomes token ids: generation, the Selfie judge,
the trainer's seed pairs and DRIFT's pairs all call it, and the trainer trains on the ids
generation recorded, so the policy is trained on exactly what it was sampled from. Judges that
read text (PairRM, an LLM judge) get `as_text`; the reward model renders the whole chat with its
own template through `chat_text`.

A template without a system role (Gemma-2's raises on one; others drop it silently) gets the
system text put before the first user turn's content, separated by a blank line: merged,
never dropped.

Long histories (`fit_prompt_ids`): over the budget, the oldest whole exchanges (a user turn and
the assistant's answer) go first, the system prompt stays; when only the last user turn is left
and it still does not fit, `generate.long_prompts` decides (keep the last tokens, or skip).
"""

import unicodedata
import weakref

ROLES = ("system", "user", "assistant")
SYSTEM_MODES = ("add", "replace")
TEXT_LABELS = {"system": "SYSTEM", "user": "USER", "assistant": "Assistant"}  # llm-blender's multi-turn labels
_SENTINEL = "\u2063SELFPLAY-SYSTEM\u2063"  # a text no system prompt contains
_system_support: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

Prompt = str | list[dict]


def messages_of(prompt: Prompt) -> list[dict]:
    """The prompt as chat messages (a string is one user turn)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def conversation_problem(value) -> str | None:
    """What is wrong with `value` as a conversation, in a few words; None when it is one."""
    if not isinstance(value, (list, tuple)) or not value:
        return f"a conversation is a non-empty list of {{role, content}} messages, got {_shown(value)}"
    expected = "user"
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"message {index} must be an object with a string 'role', got {_shown(message)}"
        role, content = message["role"], message.get("content")
        if role not in ROLES:
            return f"message {index} has role {role!r}; allowed: {', '.join(ROLES)}"
        if not isinstance(content, str) or not content.strip():
            return f"message {index} ({role}) has {'empty' if isinstance(content, str) else 'no string'} content"
        if role == "system":
            if index != 0:
                return f"message {index} is a system message; only the first message may be one"
            continue
        if role != expected:
            return f"message {index} is {role} but {expected} was expected (user and assistant turns alternate)"
        expected = "assistant" if role == "user" else "user"
    if value[-1]["role"] != "user":
        return f"the last message is {value[-1]['role']}; a prompt ends with the user turn the policy answers"
    return None


def _shown(value) -> str:
    return f"{type(value).__name__} {str(value)[:40]!r}"


def conversation(value) -> list[dict]:
    """A checked conversation with only role and content kept (ValueError naming the problem)."""
    problem = conversation_problem(value)
    if problem:
        raise ValueError(problem)
    return [{"role": m["role"], "content": m["content"]} for m in value]


def with_system(prompt: Prompt, system: str | None, mode: str = "add") -> Prompt:
    """`prompts.system`: added to a prompt that has none (mode add), or in place of its own (replace)."""
    if system is None:
        return prompt
    if mode not in SYSTEM_MODES:
        raise ValueError(f"prompts.system_mode must be one of {', '.join(SYSTEM_MODES)}, got {mode!r}")
    turns = messages_of(prompt)
    if turns[0]["role"] == "system":
        if mode == "add":
            return prompt
        turns = turns[1:]
    return [{"role": "system", "content": system}, *turns]


def last_user_turn(prompt: Prompt) -> str:
    """The text the policy answers: the prompt itself, or a conversation's last user turn."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def as_text(prompt: Prompt) -> str:
    """A prompt for judges that read plain text: a string or a lone user turn as it is, else every
    turn on its own line(s) as "SYSTEM: / USER: / Assistant: text", the last user turn last."""
    turns = messages_of(prompt)
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{TEXT_LABELS[m['role']]}: {m['content']}" for m in turns)


def duplicate_key(prompt: Prompt):
    """What duplicates are found by: each turn's text normalized (NFC, case-folded, whitespace
    collapsed) with its role; a lone user turn is keyed like the string it equals."""
    turns = messages_of(prompt)
    if len(turns) == 1 and turns[0]["role"] == "user":
        return normalized(turns[0]["content"])
    return tuple((m["role"], normalized(m["content"])) for m in turns)


def normalized(text: str) -> str:
    """Unicode NFC, case-folded, whitespace runs collapsed, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def supports_system(tokenizer) -> bool:
    """Whether the chat template renders a system message (not: raises on it, or drops it)."""
    known = _system_support.get(tokenizer)
    if known is None:
        try:
            rendered = tokenizer.apply_chat_template(
                [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "hi"}], tokenize=False,
                add_generation_prompt=True)
            known = _SENTINEL in rendered
        except Exception:  # jinja's raise_exception("System role not supported") and its kin
            known = False
        _system_support[tokenizer] = known
    return known


def template_messages(tokenizer, prompt: Prompt) -> list[dict]:
    """The messages given to `tokenizer`'s chat template: a system message its template cannot
    render is merged into the first user turn ("system\\n\\nuser")."""
    turns = messages_of(prompt)
    if turns[0]["role"] != "system" or supports_system(tokenizer):
        return turns
    system, first, *rest = turns
    return [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"}, *rest]


def chat_text(tokenizer, turns: Prompt, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(template_messages(tokenizer, turns), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def prompt_token_ids(tokenizer, prompt: Prompt) -> list[int]:
    """A prompt as the policy sees it: the whole conversation in its chat template, with the
    assistant header it answers after (special tokens come from the template, not added twice)."""
    return tokenizer(chat_text(tokenizer, prompt, True), add_special_tokens=False).input_ids


def fit_prompt_ids(tokenizer, prompt: Prompt, budget: int, rule: str) -> tuple[list[int] | None, int, bool]:
    """(the ids the engine gets, the messages dropped from the history, whether `rule` cut the
    rest) for a budget of prompt tokens: the oldest exchanges dropped until the conversation fits
    (the system prompt kept), then, if the last user turn alone does not fit, `rule`
    ("truncate": its last `budget` ids; "skip": None)."""
    if rule not in ("truncate", "skip"):
        raise ValueError(f"generate.long_prompts must be 'truncate' or 'skip', got {rule!r}")
    ids = prompt_token_ids(tokenizer, prompt)
    dropped = 0
    if len(ids) > budget and not isinstance(prompt, str):
        system = [m for m in prompt[:1] if m["role"] == "system"]
        turns = prompt[len(system):]
        for start in range(2, len(turns), 2):  # each exchange starts with a user turn
            ids, dropped = prompt_token_ids(tokenizer, system + turns[start:]), start
            if len(ids) <= budget:
                break
    if len(ids) <= budget:
        return ids, dropped, False
    return (ids[len(ids) - budget:] if rule == "truncate" else None), dropped, True
