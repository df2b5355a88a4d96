"""The long-prompt rules: a conversation over max_model_len - max_tokens loses its oldest
exchanges first (the system prompt stays); what still does not fit is left-truncated (default)
or skipped; the stage reports which prompts it touched."""

import pytest

from selfplay.conversation import fit_prompt_ids
from selfplay.generate.stage import generate_samples, prompt_budget


class CharTokenizer:
    """One token per character of a stand-in chat template: '<s>', '<u>' or '<a>' before each
    message's text, '<a>' after the last with the generation prompt."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "".join(f"<{m['role'][0]}>{m['content']}" for m in messages) + ("<a>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens):
        return type("Encoding", (), {"input_ids": [ord(c) for c in text]})()


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_budget_leaves_room_for_the_response():
    assert prompt_budget(1024, 24) == 1000
    with pytest.raises(ValueError, match="leaves no room"):
        prompt_budget(16, 16)


@pytest.mark.parametrize("rule", ["truncate", "skip"])
def test_a_prompt_that_fits_is_unchanged(rule):
    assert fit_prompt_ids(CharTokenizer(), "ab", 8, rule) == (ids("<u>ab<a>"), 0, False)


def test_truncate_keeps_the_last_tokens():   # the assistant header stays at the end
    assert fit_prompt_ids(CharTokenizer(), "abcdef", 5, "truncate") == (ids("ef<a>"), 0, True)


def test_skip_drops_the_prompt():
    assert fit_prompt_ids(CharTokenizer(), "abcdef", 5, "skip") == (None, 0, True)


HISTORY = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
           {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
           {"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"}]


def test_a_long_history_drops_its_oldest_exchanges_and_keeps_the_system_prompt():
    tokenizer = CharTokenizer()
    whole = "<s>S<u>q1<a>a1<u>q2<a>a2<u>q3<a>"
    assert fit_prompt_ids(tokenizer, HISTORY, len(whole), "truncate") == (ids(whole), 0, False)
    # one exchange (q1, a1) too many: both go, never half of one (the rest still starts with a user turn)
    assert fit_prompt_ids(tokenizer, HISTORY, len(whole) - 1, "truncate") == (ids("<s>S<u>q2<a>a2<u>q3<a>"), 2, False)
    assert fit_prompt_ids(tokenizer, HISTORY, len("<s>S<u>q3<a>"), "skip") == (ids("<s>S<u>q3<a>"), 4, False)


@pytest.mark.parametrize("rule", ["truncate", "skip"])
def test_a_last_user_turn_that_does_not_fit_follows_the_long_prompts_rule(rule):
    fitted, dropped, cut = fit_prompt_ids(CharTokenizer(), HISTORY, 8, rule)
    assert (dropped, cut) == (4, True)
    assert fitted == (ids("<u>q3<a>") if rule == "truncate" else None)  # the last 8 of "<s>S<u>q3<a>"


class EchoPool:
    """Returns, per prompt, n samples echoing the prompt length (records what it was sent)."""

    def generate(self, prompt_token_ids, seeds, n, **sampling):
        self.sent = prompt_token_ids
        return [[{"text": str(len(ids)), "token_ids": [len(ids)], "logprobs": None, "finish_reason": "length"}
                 for _ in range(n)] for ids in prompt_token_ids]


@pytest.mark.parametrize("rule", ["truncate", "skip"])
def test_the_stage_applies_the_rule_and_reports_it(rule):
    prompts = ["short", "x" * 40, "mid", "y" * 100]
    pool = EchoPool()
    table, report = generate_samples(pool, CharTokenizer(), [0, 1, 2, 3], prompts, n=2, temperature=1.0, top_p=1.0,
                                     max_tokens=4, run_seed=0, iteration=1, purpose="train", max_model_len=24,
                                     long_prompts=rule)
    assert report["budget"] == 20 and report["rule"] == rule
    rows = table.to_pylist()
    if rule == "truncate":
        assert report == {"rule": "truncate", "budget": 20, "shortened": [], "turns_dropped": 0,
                          "truncated": [1, 3], "skipped": []}
        assert [r["prompt_id"] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3]
        assert [len(ids) for ids in pool.sent] == [11, 20, 9, 20]
        assert pool.sent[1] == [ord(c) for c in ("x" * 40 + "<a>")[-20:]]
        assert rows[2]["prompt_token_ids"] == pool.sent[1]     # stored as the engine saw it
    else:
        assert report == {"rule": "skip", "budget": 20, "shortened": [], "turns_dropped": 0,
                          "truncated": [], "skipped": [1, 3]}
        assert [r["prompt_id"] for r in rows] == [0, 0, 2, 2]
    assert all(r["logprobs"] is None for r in rows)


def test_all_prompts_skipped_is_a_clear_error():
    with pytest.raises(ValueError, match="all 1 prompts are longer .* set generate.long_prompts=truncate"):
        generate_samples(EchoPool(), CharTokenizer(), [0], ["z" * 50], n=2, temperature=1.0, top_p=1.0,
                         max_tokens=4, run_seed=0, iteration=1, purpose="train", max_model_len=24,
                         long_prompts="skip")


def test_the_stage_stores_the_conversation_and_counts_the_dropped_turns():
    pool = EchoPool()
    prompts = ["plain", HISTORY]
    table, report = generate_samples(pool, CharTokenizer(), [0, 1], prompts, n=2, temperature=1.0, top_p=1.0,
                                     max_tokens=4, run_seed=0, iteration=1, purpose="train", max_model_len=26,
                                     long_prompts="truncate")
    assert (report["shortened"], report["turns_dropped"], report["truncated"]) == ([1], 2, [])
    rows = table.to_pylist()
    assert rows[0]["messages"] is None and rows[0]["prompt"] == "plain"
    assert rows[2]["messages"] == HISTORY and rows[2]["prompt"] == "q3"   # the whole conversation, its last turn
    assert rows[2]["prompt_token_ids"] == ids("<s>S<u>q2<a>a2<u>q3<a>") == pool.sent[1]
