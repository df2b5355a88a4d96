"""Scoring functions that misbehave, for tests/annotate/test_function_judge.py. They are imported
by name in the judge's child process, as a user's module would be."""

import math
import os
import re
import time

import numpy as np

RETURNS = {"int": 3, "float": 0.25, "np.float32": np.float32(0.5), "np.int64": np.int64(-2), "bool": True,
           "np.bool": np.bool_(False), "nan": math.nan, "inf": -math.inf, "str": "1.0", "none": None,
           "array": np.array([1.0])}


def returns(prompt: str, response: str):
    """Returns RETURNS[response]: the contract's edge cases."""
    return RETURNS[response]


def sleeps_on_stuck_prompts(prompt: str, response: str) -> float:
    if "stuck" in prompt:
        time.sleep(3600)
    return float(len(response))


def holds_the_gil_on_stuck_prompts(prompt: str, response: str) -> float:
    """Catastrophic regex backtracking: C code that never releases the GIL (no thread could stop it)."""
    if "stuck" in prompt:
        re.match(r"(a+)+$", "a" * 60 + "b")
    return float(len(response))


def raises(prompt: str, response: str) -> float:
    raise KeyError("no score for this one")


def exits(prompt: str, response: str) -> float:
    os._exit(3)


def constant(prompt: str, response: str) -> float:
    """A judge with no signal: every comparison is a tie."""
    return 1.0


def counts_turns(prompt, response: str) -> float:
    """The number of messages the function was given: 1 for a string prompt, else the conversation's."""
    return 1.0 if isinstance(prompt, str) else float(len(prompt))
