"""Example scoring functions for `annotate.type: function` (called as fn(prompt, response) -> number).

They give a known ground-truth preference, so tests and the quickstart can show that a
training algorithm really moves the policy toward what the judge prefers. The letter-'e'
fraction comes on three scales (x1, x0.001, x1e300, whose squared differences overflow a
float): the same preference, which must train the policy the same way (annotate.temperature: auto).
"""


def letter_e_count(prompt: str, response: str) -> float:
    """Prefers responses with more letter 'e' (a preference a tiny random policy can learn)."""
    return float(response.lower().count("e"))


def letter_e_fraction(prompt: str, response: str) -> float:
    """The share of the response's characters that are the letter 'e': a score in [0, 1]."""
    return response.lower().count("e") / max(1, len(response))


def letter_e_fraction_milli(prompt: str, response: str) -> float:
    """letter_e_fraction x 0.001."""
    return letter_e_fraction(prompt, response) * 0.001


def letter_e_fraction_huge(prompt: str, response: str) -> float:
    """letter_e_fraction x 1e300: near the float limit (a spread's squares overflow)."""
    return letter_e_fraction(prompt, response) * 1e300


def shorter_is_better(prompt: str, response: str) -> float:
    """Prefers short responses: the negative character count, in units of 10 characters."""
    return -len(response) / 10.0


def distinct_letters(prompt: str, response: str) -> float:
    """The number of different letters a-z in the response: the methods table's judge
    (scripts/bench_methods.py), a preference no test or recipe is tuned to."""
    return float(len({c for c in response.lower() if "a" <= c <= "z"}))


# The tiny LLM judge's rule (selfplay/models/tiny_judge.py): rating 1 below an e-fraction of
# 0.06, then one more at each threshold. The tiny policy's responses run 0.05-0.15 (10th-90th
# percentile), so its samples spread over the five ratings.
TINY_JUDGE_THRESHOLDS = (0.06, 0.08, 0.10, 0.12)


def tiny_judge_rating(prompt: str, response: str) -> int:
    """The rating 1-5 that `tiny:judge` is trained to give: the response's letter-'e' fraction
    in buckets at TINY_JUDGE_THRESHOLDS."""
    fraction = letter_e_fraction(prompt, response)
    return 1 + sum(fraction >= threshold for threshold in TINY_JUDGE_THRESHOLDS)


def tiny_judge_rule(prompt: str, response: str) -> float:
    """tiny_judge_rating as a score: the ground truth of a run judged by `tiny:judge`
    (evaluate.judge.function), the rating that judge is trained to give."""
    return float(tiny_judge_rating(prompt, response))
