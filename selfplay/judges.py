"""Example scoring functions for `annotate.type: function` (called as fn(prompt, response) -> float).

They give a known ground-truth preference, so tests and the quickstart can show that a
training algorithm really moves the policy toward what the judge prefers.
"""


def letter_e_count(prompt: str, response: str) -> float:
    """Prefers responses with more letter 'e' (a preference a tiny random policy can learn)."""
    return float(response.lower().count("e"))


def shorter_is_better(prompt: str, response: str) -> float:
    """Prefers short responses: the negative character count, in units of 10 characters."""
    return -len(response) / 10.0
