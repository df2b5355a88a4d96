"""Magpie's instruction filters on hand-written strings, with hand-checked counts."""

from selfplay.magpie.filters import RULES, filter_instructions, first_broken_rule, jaccard, max_ngram_count, shingles

LIMITS = dict(min_chars=10, max_chars=60, repeat_ngram=2, max_ngram_repeats=2)


def run(texts, eval_prompts=(), earlier=(), near_duplicate=0.7):
    return filter_instructions(list(texts), eval_prompts=list(eval_prompts), earlier=list(earlier),
                               near_duplicate=near_duplicate, **LIMITS)


def test_each_single_text_rule():
    assert first_broken_rule("  \n ", **LIMITS) == "empty"
    assert first_broken_rule(" too short ", **LIMITS) == "too_short"  # 9 characters once stripped
    assert first_broken_rule("Name ten rivers.", **LIMITS) is None
    assert first_broken_rule("x" * 61, **LIMITS) == "too_long"
    assert first_broken_rule("x" * 60, **LIMITS) is None
    assert first_broken_rule("Here is my list of questions:", **LIMITS) == "ends_with_colon"
    assert first_broken_rule("Here is my list: apples", **LIMITS) is None
    # "go on" three times: a 2-gram over max_ngram_repeats (2)
    assert first_broken_rule("go on go on go on now", **LIMITS) == "repeated_ngram"
    assert first_broken_rule("go on go on, then stop", **LIMITS) is None


def test_ngram_counts_and_shingles_by_hand():
    assert max_ngram_count("a b a b a", 2) == 2  # (a b) twice, (b a) twice
    assert max_ngram_count("A  b A B", 2) == 2  # case and spaces are normalized
    assert max_ngram_count("one", 2) == 0
    assert shingles("abcdef") == {"abcde", "bcdef"}
    assert shingles("ab") == {"ab"}
    assert jaccard(shingles("abcdef"), shingles("abcdeg")) == 1 / 3  # {abcde} of {abcde, bcdef, bcdeg}
    assert jaccard(shingles("Hello World"), shingles("hello   world")) == 1.0


def test_filter_counts_each_rule_once_and_keeps_order():
    texts = ["Write a poem about the sea.",        # kept
             "",                                     # empty
             "short",                                # too_short
             "List the steps:",                      # ends_with_colon
             "write a poem   about the SEA.",        # near_duplicate (same normalized text)
             "Write a poem about the seas.",         # near_duplicate (5-gram Jaccard 22/25)
             "What is the capital of France?",       # eval_prompt
             "Explain how tides work.",              # near_duplicate_earlier
             "Describe a cat."]                      # kept
    kept, counts = run(texts, eval_prompts=["what is the capital of  france?"], earlier=["Explain how tides work"])
    assert kept == [0, 8]
    assert counts == {"empty": 1, "too_short": 1, "too_long": 0, "ends_with_colon": 1, "repeated_ngram": 0,
                      "eval_prompt": 1, "near_duplicate_earlier": 1, "near_duplicate": 2}
    assert set(counts) == set(RULES) and sum(counts.values()) + len(kept) == len(texts)


def test_near_duplicate_threshold():
    a, b = "Write a poem about the sea.", "Write a poem about the seas."
    similarity = jaccard(shingles(a), shingles(b))
    assert run([a, b], near_duplicate=similarity)[0] == [0]
    assert run([a, b], near_duplicate=similarity + 1e-9)[0] == [0, 1]


def test_an_eval_prompt_is_dropped_even_when_nothing_else_is():
    kept, counts = run(["Tell me a joke please."], eval_prompts=["TELL me a joke please."])
    assert kept == [] and counts["eval_prompt"] == 1
