"""`annotate.type: function`: a user's Python scoring function `fn(prompt, response) -> float`.

Scores become a Bradley-Terry win matrix downstream. Runs in the driver process: it is plain
Python, and the user's module is importable there (recipe validation already imported it).
"""

import math

import numpy as np

from selfplay.annotate.base import Judge, Judgment
from selfplay.recipe import load_function


class FunctionJudge(Judge):
    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_function(spec)

    def judge(self, prompts, responses):
        judgments = []
        for prompt, group in zip(prompts, responses):
            scores = []
            for response in group:
                score = self.fn(prompt, response)
                if not isinstance(score, (int, float)) or not math.isfinite(score):
                    raise ValueError(f"annotate.function {self.spec} returned {score!r} (needs a finite float)")
                scores.append(float(score))
            judgments.append(Judgment(scores=np.array(scores)))
        return judgments
