"""The judge interface shared by every annotator.

A judge sees one prompt and its K responses at a time (batched internally as it likes) and
returns either K scalar `scores` or a K x K matrix of `pairwise_logits` (L[i, j]: logit that
response i beats response j). The raw output is stored; `win_matrix()` derives P.
A NaN score marks an empty response that no judge saw (judging.calls.judge_groups); it is
filled in relative to the temperature (win_matrix.fill_empty_scores).

The errors of a judge call are here too, for every judge: judge_groups puts the prompt ids in
front of their messages (calls._judge_error); any other error passes unchanged.
"""

from dataclasses import dataclass

import numpy as np

from selfplay.judging import win_matrix as wm


class JudgeTimeout(RuntimeError):
    """A judge call ran past annotate.timeout_seconds; the judge's processes were killed."""

    @classmethod
    def after(cls, judge: str, what: str, timeout: float, killed: str) -> "JudgeTimeout":
        return cls(f"{judge} did not {what} within annotate.timeout_seconds={timeout:g} ({killed})")


class ScoreError(ValueError):
    """The scoring function returned something that is not a finite real number, or raised."""


@dataclass
class Judgment:
    scores: np.ndarray | None = None            # shape (K,)
    pairwise_logits: np.ndarray | None = None   # shape (K, K)
    # an LLM judge's reading (llm_judge.py): per response its aspect ratings (NaN: missing) and
    # rationales, and how many answers it asked for, retried, and still found unusable
    ratings: list | None = None
    rationales: list | None = None
    answers: int = 0
    retried: int = 0
    missing: int = 0
    too_long: int = 0  # of the missing: questions longer than the judge's context

    def filled_scores(self, temperature: float = 1.0) -> np.ndarray:
        return wm.fill_empty_scores(self.scores, temperature)

    def win_matrix(self, rule: str = "aggregated", temperature: float = 1.0) -> np.ndarray:
        if self.pairwise_logits is not None:
            return wm.from_pairwise_logits(self.pairwise_logits, rule)
        return wm.bradley_terry(self.filled_scores(temperature), temperature)

    def wins(self) -> np.ndarray:
        """W[i, j]: 1 if the judge prefers i to j, 0.5 on a tie (win_matrix.comparison_wins)."""
        if self.pairwise_logits is not None:
            return wm.comparison_wins(pairwise_logits=self.pairwise_logits)
        return wm.comparison_wins(scores=self.filled_scores())


class Judge:
    """Subclasses implement `judge(prompts, responses)`.

    prompts: list of N prompts, each a string (the user turn, without chat template) or a
        conversation (a list of {role, content}, ending with the user turn; selfplay/conversation.py);
    responses: list of N lists of K response strings.
    Returns a list of N Judgments.
    """

    # judge() also takes `token_ids` (per prompt: its ids, each response's ids, as sampled), and
    # judge_groups passes them (Selfie scores the very sequences the train stage trains on)
    takes_token_ids = False

    def judge(self, prompts: list, responses: list[list[str]]) -> list[Judgment]:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Release the judge's resources (model judges in Ray actors override this)."""
