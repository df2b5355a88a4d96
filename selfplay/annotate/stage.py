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
    return RemoteJudge(cls, args, num_gpus=config.num_gpus)


class RemoteJudge:
    """A judge living in a Ray actor; `judge()` has the same signature as a local one."""

    def __init__(self, cls, args: dict, num_gpus: float = 0.0):
        self.actor = ray.remote(num_cpus=1, num_gpus=num_gpus)(cls).remote(**args)

    def judge(self, prompts, responses):
        return ray.get(self.actor.judge.remote(prompts, responses))

    def shutdown(self):
        ray.kill(self.actor)


def judge_groups(judge, groups: list[tuple[int, str, list[str]]], chunk: int = 64, desc: str = "judge") -> list[Judgment]:
    """Judge (prompt_id, prompt, responses) groups in chunks, with progress."""
    judgments = []
    with tqdm(total=len(groups), desc=desc, unit="prompt", leave=False) as bar:
        for start in range(0, len(groups), chunk):
            part = groups[start:start + chunk]
            judgments += judge.judge([p for _, p, _ in part], [r for _, _, r in part])
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
