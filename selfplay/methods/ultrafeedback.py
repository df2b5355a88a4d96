"""UltraFeedback's binarization (Zephyr's UltraFeedback-binarized): a preference pair per prompt.

Pair rule `binarized`: chosen = the response with the highest score, rejected = one of the
others drawn at random; responses tied with the chosen one are never drawn, and a prompt whose
responses all tie gives no pair. With an LLM judge the score is the mean aspect rating
(selfplay/judging/llm_judge.py). The draw is seeded by the prompt's scores, so the same
judgments always give the same pairs (resume and fork rebuild them identically). Losses: DPO's.
"""

import zlib

import numpy as np

from selfplay.methods.base import Method, PairRule
from selfplay.methods.dpo import TARGET_COLUMNS, ranking_of


def binarized_pairs(win_matrix: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
    win_matrix = np.asarray(win_matrix, dtype=np.float64)
    win_rates, ranking = ranking_of(win_matrix, scores)
    chosen = int(np.argmax(ranking))
    others = [i for i in range(len(ranking)) if ranking[i] < ranking[chosen]]
    if not others:
        return []
    rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(ranking).tobytes()))
    rejected = int(rng.choice(others))
    return [{"chosen": chosen, "rejected": rejected,
             "chosen_score": float(ranking[chosen]), "rejected_score": float(ranking[rejected]),
             "chosen_win_rate": float(win_rates[chosen]), "rejected_win_rate": float(win_rates[rejected]),
             "chosen_beats_rejected": float(win_matrix[chosen, rejected])}]


METHOD = Method("ultrafeedback", pair_rules={"binarized": PairRule(binarized_pairs, TARGET_COLUMNS)})
