"""The judge interface shared by every annotator.

A judge sees one prompt and its K responses at a time (batched internally as it likes) and
returns either K scalar `scores` or a K x K matrix of `pairwise_logits` (L[i, j]: logit that
response i beats response j). The raw output is stored; `win_matrix()` derives P.
"""

from dataclasses import dataclass

import numpy as np

from selfplay.annotate import win_matrix as wm


@dataclass
class Judgment:
    scores: np.ndarray | None = None            # shape (K,)
    pairwise_logits: np.ndarray | None = None   # shape (K, K)

    def win_matrix(self, rule: str = "aggregated", temperature: float = 1.0) -> np.ndarray:
        if self.pairwise_logits is not None:
            return wm.from_pairwise_logits(self.pairwise_logits, rule)
        return wm.bradley_terry(self.scores, temperature)


class Judge:
    """Subclasses implement `judge(prompts, responses)`.

    prompts: list of N prompt strings (the user turn, without chat template);
    responses: list of N lists of K response strings.
    Returns a list of N Judgments.
    """

    def judge(self, prompts: list[str], responses: list[list[str]]) -> list[Judgment]:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Release the judge's resources (model judges in Ray actors override this)."""
