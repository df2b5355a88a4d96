"""The long-prompt rule: a chat-templated prompt longer than max_model_len - max_tokens is
left-truncated (default) or skipped, and the stage reports which prompts it touched."""

import pytest

from selfplay.generate.stage import fit_prompt, generate_samples, prompt_budget


def test_budget_leaves_room_for_the_response():
    assert prompt_budget(1024, 24) == 1000
    with pytest.raises(ValueError, match="leaves no room"):
        prompt_budget(16, 16)


def test_a_prompt_that_fits_is_unchanged():
    assert fit_prompt([1, 2, 3], 3, "truncate") == [1, 2, 3]
    assert fit_prompt([1, 2, 3], 3, "skip") == [1, 2, 3]


def test_truncate_keeps_the_last_tokens():
    assert fit_prompt([1, 2, 3, 4, 5], 2, "truncate") == [4, 5]   # the assistant header stays at the end


def test_skip_drops_the_prompt():
    assert fit_prompt([1, 2, 3, 4, 5], 4, "skip") is None


class CharTokenizer:
    """One token per character of '<u>' + prompt + '<a>' (a stand-in chat template)."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "<u>" + messages[0]["content"] + "<a>"

    def __call__(self, text, add_special_tokens):
        return type("Encoding", (), {"input_ids": [ord(c) for c in text]})()


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
        assert report == {"rule": "truncate", "budget": 20, "truncated": [1, 3], "skipped": []}
        assert [r["prompt_id"] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3]
        assert [len(ids) for ids in pool.sent] == [11, 20, 9, 20]
        assert pool.sent[1] == [ord(c) for c in ("x" * 40 + "<a>")[-20:]]
        assert rows[2]["prompt_token_ids"] == pool.sent[1]     # stored as the engine saw it
    else:
        assert report == {"rule": "skip", "budget": 20, "truncated": [], "skipped": [1, 3]}
        assert [r["prompt_id"] for r in rows] == [0, 0, 2, 2]
    assert all(r["logprobs"] is None for r in rows)


def test_all_prompts_skipped_is_a_clear_error():
    with pytest.raises(ValueError, match="all 1 prompts are longer .* set generate.long_prompts=truncate"):
        generate_samples(EchoPool(), CharTokenizer(), [0], ["z" * 50], n=2, temperature=1.0, top_p=1.0,
                         max_tokens=4, run_seed=0, iteration=1, purpose="train", max_model_len=24,
                         long_prompts="skip")
