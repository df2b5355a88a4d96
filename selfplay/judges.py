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
