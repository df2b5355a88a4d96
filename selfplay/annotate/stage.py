"""The annotate stage: judge each prompt's K samples; keep the raw judgment and the win matrix.

judgments.parquet has one row per prompt: prompt_id, K, raw `scores` (K) or
`pairwise_logits` (K*K, row-major), and the `win_matrix` (K*K) under the recipe's rule.
Model judges run in a Ray actor with their own resource request; the function judge runs
in the driver.
"""

import numpy as np
import pyarrow as pa
import ray
from tqdm import tqdm

from selfplay.annotate.base import Judgment


def make_judge(config, policy_path: str, seed: int = 0, default_reference: str | None = None):
    """A judge for the recipe's annotate section; model judges become Ray actors."""
    from selfplay.models import resolve_model

    if config.type == "function":
        from selfplay.annotate.function import FunctionJudge

        return FunctionJudge(config.function)
    if config.type == "pairrm":
        from selfplay.annotate.pairrm import PairRMJudge as cls
        args = dict(path=str(resolve_model(config.path, seed)), backend=config.backend, batch_tokens=config.batch_tokens)
    elif config.type == "reward_model":
        from selfplay.annotate.reward_model import RewardModelJudge as cls
        args = dict(path=str(resolve_model(config.path, seed)), batch_tokens=config.batch_tokens)
    elif config.type == "selfie":
        from selfplay.annotate.selfie import SelfieJudge as cls
        # SPA judges against a FIXED reference (the SFT model): the recipe's, else the initial policy
        reference = config.reference or default_reference or policy_path
        args = dict(policy_path=str(policy_path), reference_path=str(resolve_model(reference, seed)),
                    batch_tokens=config.batch_tokens)
    else:
        raise ValueError(f"annotate.type {config.type!r} is not supported")
    args["device"] = "cuda" if config.num_gpus > 0 else "cpu"  # Ray pins the actor's GPU as cuda:0
    return RemoteJudge(cls, args, num_gpus=config.num_gpus)


class RemoteJudge:
    """A judge living in a Ray actor; `judge()` has the same signature as a local one."""

    def __init__(self, cls, args: dict, num_gpus: float = 0.0):
        self.takes_token_ids = getattr(cls, "takes_token_ids", False)
        self.actor = ray.remote(num_cpus=1, num_gpus=num_gpus)(cls).remote(**args)

    def judge(self, prompts, responses, **token_ids):
        return ray.get(self.actor.judge.remote(prompts, responses, **token_ids))

    def shutdown(self):
        ray.kill(self.actor)


# An empty response (the policy ended its turn at once) is a real sample, but judges reject
# empty text. The rule: the judge never sees it, and it loses to every non-empty response
# with this logit gap (P ~ 1 - 2e-22); two empty responses tie.
EMPTY_RESPONSE_GAP = 50.0


def _with_empty_responses(judgment: Judgment | None, nonempty: list[int], k: int) -> Judgment:
    if judgment is not None and judgment.pairwise_logits is not None:
        logits = np.zeros((k, k))
        logits[np.ix_(nonempty, nonempty)] = judgment.pairwise_logits
        empty = [i for i in range(k) if i not in nonempty]
        logits[np.ix_(nonempty, empty)] = EMPTY_RESPONSE_GAP
        logits[np.ix_(empty, nonempty)] = -EMPTY_RESPONSE_GAP
        return Judgment(pairwise_logits=logits)
    known = np.zeros(len(nonempty)) if judgment is None else np.asarray(judgment.scores, dtype=np.float64)
    scores = np.full(k, (known.min() if len(known) else 0.0) - EMPTY_RESPONSE_GAP)
    scores[nonempty] = known
    return Judgment(scores=scores)


def judge_groups(judge, groups: list[tuple[int, str, list[str]]], chunk: int = 64, desc: str = "judge",
                 token_ids: list[tuple[list[int], list[list[int]]]] | None = None) -> list[Judgment]:
    """Judge (prompt_id, prompt, responses) groups in chunks, with progress.

    Empty responses are handled here (see EMPTY_RESPONSE_GAP), so every judge sees only
    non-empty text; a group with fewer than two non-empty responses needs no judge call.
    token_ids (per group: prompt ids, response ids, as sampled) go to judges that take them.
    """
    judgments = []
    pass_ids = token_ids is not None and getattr(judge, "takes_token_ids", False)
    with tqdm(total=len(groups), desc=desc, unit="prompt", leave=False) as bar:
        for start in range(0, len(groups), chunk):
            part = groups[start:start + chunk]
            nonempty = [[i for i, r in enumerate(responses) if r.strip()] for _, _, responses in part]
            asked = [j for j, keep in enumerate(nonempty) if len(keep) >= 2]
            extra = {}
            if pass_ids:
                extra["token_ids"] = [(token_ids[start + j][0], [token_ids[start + j][1][i] for i in nonempty[j]])
                                      for j in asked]
            answers = dict(zip(asked, judge.judge([part[j][1] for j in asked],
                                                  [[part[j][2][i] for i in nonempty[j]] for j in asked],
                                                  **extra))) if asked else {}
            for j, (_, _, responses) in enumerate(part):
                judgment = answers.get(j)
                if len(nonempty[j]) < len(responses) or judgment is None:
                    judgment = _with_empty_responses(judgment, nonempty[j], len(responses))
                judgments.append(judgment)
            bar.update(len(part))
    return judgments


def judgments_table(groups, judgments: list[Judgment], rule: str, temperature: float) -> pa.Table:
    rows = []
    for (prompt_id, _, responses), judgment in zip(groups, judgments):
        k = len(responses)
        matrix = judgment.win_matrix(rule, temperature)
        if matrix.shape != (k, k):
            raise ValueError(f"judge returned a {matrix.shape} matrix for {k} responses of prompt {prompt_id}")
        rows.append({"prompt_id": prompt_id, "num_samples": k,
                     "scores": None if judgment.scores is None else np.asarray(judgment.scores, float).tolist(),
                     "pairwise_logits": None if judgment.pairwise_logits is None
                     else np.asarray(judgment.pairwise_logits, float).ravel().tolist(),
                     "win_matrix": matrix.ravel().tolist()})
    return pa.Table.from_pylist(rows)


def win_matrix_of(row: dict) -> np.ndarray:
    k = row["num_samples"]
    return np.asarray(row["win_matrix"], dtype=np.float64).reshape(k, k)
