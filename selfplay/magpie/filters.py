"""Magpie's instruction filters: pure functions over the sampled texts, each drop counted.

A candidate instruction is dropped by the first rule it breaks, in this order:
1. `empty`: nothing but whitespace;
2. `too_short` / `too_long`: fewer than min_chars or more than max_chars characters (stripped);
3. `ends_with_colon`: it ends with ':' (the model announced a list or a text it never wrote);
4. `repeated_ngram`: some word n-gram (n = repeat_ngram) occurs more than max_ngram_repeats
   times (a model stuck in a loop);
5. `eval_prompt`: it equals an eval prompt up to case, whitespace and Unicode form (the same
   normalization selfplay/prompts.py finds duplicate prompts by), so the held-out set stays held out;
6. `near_duplicate_earlier`: it is a near duplicate of a prompt kept in an earlier iteration;
7. `near_duplicate`: it is a near duplicate of a candidate kept before it in this iteration.
Near duplicates: the same normalized text, or a Jaccard similarity of at least
`near_duplicate` between their sets of character 5-grams (shingles of the normalized text).
Magpie's code compares sentence embeddings (neighbours within distance 0.05); shingles need no
embedding model and catch the same copies with small edits. The comparison is pairwise, so an
iteration costs O(candidates x (kept + earlier)) set intersections: fine for thousands.
"""

from collections import Counter

from selfplay.conversation import normalized

RULES = ("empty", "too_short", "too_long", "ends_with_colon", "repeated_ngram", "eval_prompt",
         "near_duplicate_earlier", "near_duplicate")
SHINGLE = 5


def max_ngram_count(text: str, n: int) -> int:
    """How often the most frequent word n-gram of `text` occurs (0 when it has fewer than n words)."""
    words = normalized(text).split()
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return max(counts.values(), default=0)


def shingles(text: str) -> frozenset[str]:
    """The character 5-grams of the normalized text (the text itself when shorter)."""
    key = normalized(text)
    if len(key) <= SHINGLE:
        return frozenset([key])
    return frozenset(key[i:i + SHINGLE] for i in range(len(key) - SHINGLE + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def first_broken_rule(text: str, *, min_chars: int, max_chars: int, repeat_ngram: int,
                      max_ngram_repeats: int) -> str | None:
    """The first of rules 1-4 that `text` breaks, or None (rules 5-7 need the other texts)."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if len(stripped) < min_chars:
        return "too_short"
    if len(stripped) > max_chars:
        return "too_long"
    if stripped.endswith(":"):
        return "ends_with_colon"
    if max_ngram_count(stripped, repeat_ngram) > max_ngram_repeats:
        return "repeated_ngram"
    return None


def filter_instructions(texts: list[str], *, eval_prompts: list[str], earlier: list[str], min_chars: int,
                        max_chars: int, repeat_ngram: int, max_ngram_repeats: int,
                        near_duplicate: float) -> tuple[list[int], dict[str, int]]:
    """(indices of the kept texts in order, {rule: texts it dropped} for every rule)."""
    eval_keys = {normalized(p) for p in eval_prompts}
    earlier_keys = {normalized(p) for p in earlier}
    earlier_shingles = [shingles(p) for p in earlier]
    kept, kept_keys, kept_shingles = [], set(), []
    counts = dict.fromkeys(RULES, 0)

    def near(key, grams, keys, others) -> bool:
        return key in keys or any(jaccard(grams, other) >= near_duplicate for other in others)

    for index, text in enumerate(texts):
        rule = first_broken_rule(text, min_chars=min_chars, max_chars=max_chars, repeat_ngram=repeat_ngram,
                                 max_ngram_repeats=max_ngram_repeats)
        if rule is None:
            key, grams = normalized(text), shingles(text)
            if key in eval_keys:
                rule = "eval_prompt"
            elif near(key, grams, earlier_keys, earlier_shingles):
                rule = "near_duplicate_earlier"
            elif near(key, grams, kept_keys, kept_shingles):
                rule = "near_duplicate"
            else:
                kept.append(index)
                kept_keys.add(key)
                kept_shingles.append(grams)
                continue
        counts[rule] += 1
    return kept, counts
