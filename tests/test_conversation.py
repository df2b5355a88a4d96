"""Prompts as conversations (selfplay/conversation.py): the row checks, the system-prompt rules,
the text judges read, duplicates, and the model input on real tiny tokenizers, one whose
template has a system role (tiny:llama) and Gemma-2's, which has none (tiny:gemma2)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfplay.conversation import (
    as_text,
    chat_text,
    conversation_problem,
    duplicate_key,
    last_user_turn,
    prompt_token_ids,
    supports_system,
    template_messages,
    with_system,
)
from selfplay.prompts import PromptError, distinct_ids, load_prompts


def turn(role, content):
    return {"role": role, "content": content}


CHAT = [turn("system", "Answer in French."), turn("user", "Name a colour."), turn("assistant", "Bleu."),
        turn("user", "Another one?")]


@pytest.mark.parametrize("value, problem", [
    ([], "non-empty list"),
    ("a string", "non-empty list"),
    ([turn("user", "hi"), "text"], "message 1 must be an object"),
    ([turn("human", "hi")], "role 'human'; allowed: system, user, assistant"),
    ([turn("user", "  ")], "message 0 (user) has empty content"),
    ([{"role": "user"}], "message 0 (user) has no string content"),
    ([turn("user", "a"), turn("system", "s"), turn("user", "b")], "message 1 is a system message; only the first"),
    ([turn("assistant", "a"), turn("user", "b")], "message 0 is assistant but user was expected"),
    ([turn("user", "a"), turn("user", "b")], "message 1 is user but assistant was expected"),
    ([turn("user", "a"), turn("assistant", "b")], "the last message is assistant"),
    ([turn("system", "s")], "the last message is system"),
])
def test_a_bad_conversation_is_named(value, problem):
    assert problem in conversation_problem(value)


def test_good_conversations_pass():
    assert conversation_problem(CHAT) is None
    assert conversation_problem([turn("user", "hi")]) is None


def test_system_prompt_rules():
    assert with_system("hi", None) == "hi"                                  # no system prompt: unchanged
    assert with_system("hi", "Be kind.") == [turn("system", "Be kind."), turn("user", "hi")]
    assert with_system(CHAT, "Be kind.") == CHAT                            # add: only where there is none
    assert with_system(CHAT, "Be kind.", "replace") == [turn("system", "Be kind."), *CHAT[1:]]
    assert with_system(CHAT[1:], "Be kind.", "replace") == [turn("system", "Be kind."), *CHAT[1:]]
    with pytest.raises(ValueError, match="system_mode"):
        with_system("hi", "x", "prepend")


def test_text_for_text_judges_keeps_every_turn_and_ends_with_the_last_user_turn():
    assert as_text("hi") == "hi" and as_text([turn("user", "hi")]) == "hi"   # one turn reads as before
    assert as_text(CHAT) == ("SYSTEM: Answer in French.\nUSER: Name a colour.\nAssistant: Bleu.\n"
                             "USER: Another one?")
    assert last_user_turn(CHAT) == "Another one?" and last_user_turn("hi") == "hi"


def test_duplicates_are_equal_normalized_turns():
    prompts = ["Name a colour.", [turn("user", "name a  COLOUR.")],           # a lone user turn is its text
               CHAT, [{**m, "content": m["content"].upper()} for m in CHAT],   # case and spaces do not count
               [turn("system", "Answer in German."), *CHAT[1:]],                # another system prompt does
               [turn("user", "Name a colour."), turn("assistant", "Bleu."), turn("user", "Another one?")]]
    assert distinct_ids(prompts) == [0, 2, 4, 5]
    assert duplicate_key(CHAT[1:2]) == duplicate_key("name a colour.")


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    from selfplay.models import resolve_model

    return {kind: AutoTokenizer.from_pretrained(resolve_model(f"tiny:{kind}")) for kind in ("llama", "gemma2")}


def test_model_input_is_the_whole_conversation_in_the_chat_template(tokenizers):
    tokenizer = tokenizers["llama"]
    assert supports_system(tokenizer)
    expected = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert prompt_token_ids(tokenizer, CHAT) == list(expected)
    assert prompt_token_ids(tokenizer, "Name a colour.") == list(tokenizer.apply_chat_template(
        [turn("user", "Name a colour.")], add_generation_prompt=True, tokenize=True, return_dict=False))


def test_a_template_without_a_system_role_gets_it_merged_into_the_first_user_turn(tokenizers):
    tokenizer = tokenizers["gemma2"]
    assert not supports_system(tokenizer)
    with pytest.raises(Exception, match="System role not supported"):   # what the template itself does
        tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    merged = [turn("user", "Answer in French.\n\nName a colour."), *CHAT[2:]]
    assert template_messages(tokenizer, CHAT) == merged
    assert prompt_token_ids(tokenizer, CHAT) == list(tokenizer.apply_chat_template(
        merged, add_generation_prompt=True, tokenize=True, return_dict=False))
    assert "Answer in French." in chat_text(tokenizer, CHAT, True)     # never dropped
    assert template_messages(tokenizer, CHAT[1:]) == CHAT[1:]           # nothing to merge


def write_chats(folder, rows, column="messages"):
    (folder / "chats.jsonl").write_text("".join(json.dumps({column: r, "id": i}) + "\n" for i, r in enumerate(rows)))
    pq.write_table(pa.table({column: rows}), folder / "chats.parquet")
    import datasets

    datasets.Dataset.from_dict({column: rows}).save_to_disk(str(folder / "chats"))


def test_jsonl_parquet_and_a_datasets_folder_give_the_same_conversations(tmp_path):
    rows = [CHAT, [turn("user", "Just one turn.")], [turn("system", "S"), turn("user", "q")]]
    write_chats(tmp_path, rows)
    for source in ("chats.jsonl", "chats.parquet", "chats"):
        assert load_prompts(str(tmp_path / source), messages_field="messages") == rows


@pytest.mark.parametrize("source, where", [("chats.jsonl", "chats.jsonl:2: column 'messages'"),
                                           ("chats.parquet", "chats.parquet: row 1 of column 'messages'"),
                                           ("chats", "chats: row 1 of column 'messages'")])
def test_a_bad_row_is_named_with_its_problem(tmp_path, source, where):
    write_chats(tmp_path, [CHAT, [turn("user", "q"), turn("assistant", "a")]])
    with pytest.raises(PromptError, match=f"{where}: the last message is assistant"):
        load_prompts(str(tmp_path / source), messages_field="messages")


def test_a_missing_column_suggests_messages_field(tmp_path):
    write_chats(tmp_path, [CHAT])
    for source in ("chats.parquet", "chats"):
        with pytest.raises(PromptError, match="column 'prompt' not in .*set prompts.messages_field=messages"):
            load_prompts(str(tmp_path / source))
    (tmp_path / "mixed.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(PromptError, match="mixed.jsonl:2: no 'messages'"):
        load_prompts(str(tmp_path / "mixed.jsonl"), messages_field="messages")


def test_an_edited_turn_or_system_prompt_changes_what_generation_is_done_for(tmp_path):
    """The generate stage's config digest covers whole conversations (resume redoes the stage)."""
    from types import SimpleNamespace

    from selfplay import runs
    from selfplay.generate.stage import Sample
    from selfplay.prompts import load_prompt_pool
    from selfplay.recipe import load_recipe

    from conftest import REPO

    rows = [[turn("system", "S"), turn("user", f"q{i}"), turn("assistant", "a"), turn("user", f"more {i}")]
            for i in range(6)]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))

    def digest(rows_changed=None, *overrides):
        if rows_changed is not None:
            (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows_changed))
        recipe = load_recipe(REPO / "recipes" / "chat-cpu.yaml", [f"prompts.path={tmp_path / 'chats.jsonl'}",
                             "prompts.eval_size=2", "prompts.per_iteration=2", "iterations=2", *overrides])
        pool = load_prompt_pool(recipe)
        ctx = SimpleNamespace(recipe=recipe, prompts=pool.prompts, slices=pool.slices, eval_ids=pool.eval_ids,
                              run_dir=tmp_path / "run")
        return runs.digest_of(Sample.generate(recipe, 1).config(ctx))

    before = digest()
    assert digest(None) == before
    assert digest(None, "prompts.system=Other.", "prompts.system_mode=replace") != before
    edited = [[*r[:2], turn("assistant", "an edited answer"), r[3]] for r in rows]   # an earlier turn only
    assert digest(edited) != before
