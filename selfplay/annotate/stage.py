"""The annotate stage: judge each prompt's K samples; keep the raw judgment and the win matrix.

judgments.parquet has one row per prompt: prompt_id, K, raw `scores` (K) or
`pairwise_logits` (K*K, row-major), the `temperature` that turned scores into P (null for a
pairwise judge), and the `win_matrix` (K*K) under the recipe's rule.
Model judges run in a Ray actor with their own resource request; the function judge runs
in a child process (annotate.function). A scoring function is asked one prompt at a time, so
progress moves per prompt; a model judge gets `RemoteJudge.prompts_per_call` prompts per call,
which it packs into token-budget batches. A call past `annotate.timeout_seconds` fails the
stage with a line naming its prompt(s).

Scalar scores are scale-free (`annotate.temperature: auto`, see win_matrix.py): the
temperature is resolved once per stage from all of its scores. A stage whose judgments carry
no signal (every comparison a tie, or Phat within 0.01 of 0.5 for at least 90% of prompts)
says so in the log and in its manifest's `warnings`.
"""

import logging
from collections import deque

import numpy as np
import pyarrow as pa
import ray
from tqdm import tqdm

from selfplay.annotate import win_matrix as wm
from selfplay.annotate.base import JudgeTimeout, Judgment

log = logging.getLogger("selfplay")
# Share of prompts without signal from which a stage warns ("nearly every prompt").
NO_SIGNAL_WARN_FRACTION = 0.9
# Calls kept queued at a Ray judge, so it never idles while the driver handles a result.
IN_FLIGHT = 2


def make_judge(config, policy_path: str, seed: int = 0, default_reference: str | None = None):
    """A judge for the recipe's annotate section; model judges become Ray actors."""
    from selfplay.models import resolve_model

    if config.type == "function":
        from selfplay.annotate.function import FunctionJudge

        return FunctionJudge(config.function, timeout=config.timeout_seconds)
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
    return RemoteJudge(cls, args, num_gpus=config.num_gpus, timeout=config.timeout_seconds)


class RemoteJudge:
    """A judge living in a Ray actor; `judge()` has the same signature as a local one.

    `submit` / `result` let judge_groups keep a call queued while it waits for the previous
    one; every wait (the actor's start-up included) ends at `timeout` seconds.
    """

    # Prompts per call: a model judge packs all pairs of a call into token-budget batches, so
    # one prompt (K*(K-1) PairRM pairs) per call would leave a GPU mostly idle.
    prompts_per_call = 32

    def __init__(self, cls, args: dict, num_gpus: float = 0.0, timeout: float | None = None):
        self.takes_token_ids = getattr(cls, "takes_token_ids", False)
        self.timeout = timeout
        self.started = False
        self.actor = ray.remote(num_cpus=1, num_gpus=num_gpus)(cls).remote(**args)

    def _get(self, ref, what: str):
        try:
            return ray.get(ref, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()  # it is stuck; a later stage starts a fresh one
            raise JudgeTimeout(f"the judge did not {what} within annotate.timeout_seconds={self.timeout:g} "
                               f"(its actor was killed)") from None

    def submit(self, prompts, responses, **token_ids):
        if not self.started:  # loading the model is not a judge call: it gets its own deadline
            self._get(self.actor.__ray_ready__.remote(), "finish loading")
            self.started = True
        return self.actor.judge.remote(prompts, responses, **token_ids)

    def result(self, ref):
        return self._get(ref, "return")

    def judge(self, prompts, responses, **token_ids):
        return self.result(self.submit(prompts, responses, **token_ids))

    def shutdown(self):
        ray.kill(self.actor)


def _judge_error(error: Exception, prompt_ids: list) -> Exception:
    """The same error with the prompt(s) it was on in front; other error types pass unchanged
    (a dead Ray worker must stay a RayActorError for the driver's retry)."""
    from selfplay.annotate.function import ScoreError

    if type(error) not in (JudgeTimeout, ScoreError, ValueError):
        return error
    where = ", ".join(str(p) for p in prompt_ids[:4]) + (f", ... ({len(prompt_ids)} prompts in the call)"
                                                         if len(prompt_ids) > 4 else "")
    return type(error)(f"prompt_id {where}: {error}")


def _with_empty_responses(judgment: Judgment | None, nonempty: list[int], k: int) -> Judgment:
    """Put the judged responses back among the empty ones: NaN scores (filled relative to the
    stage's temperature, win_matrix.fill_empty_scores) or a logit gap of EMPTY_RESPONSE_GAP."""
    if judgment is not None and judgment.pairwise_logits is not None:
        logits = np.zeros((k, k))
        logits[np.ix_(nonempty, nonempty)] = judgment.pairwise_logits
        empty = [i for i in range(k) if i not in nonempty]
        logits[np.ix_(nonempty, empty)] = wm.EMPTY_RESPONSE_GAP
        logits[np.ix_(empty, nonempty)] = -wm.EMPTY_RESPONSE_GAP
        return Judgment(pairwise_logits=logits)
    known = np.zeros(len(nonempty)) if judgment is None else np.asarray(judgment.scores, dtype=np.float64)
    scores = np.full(k, np.nan)
    scores[nonempty] = known
    return Judgment(scores=scores)


def _check_judgment(judgment: Judgment, k: int) -> None:
    """A judge's output has the right shape and finite numbers (NaN is reserved for empty responses)."""
    raw = judgment.scores if judgment.pairwise_logits is None else judgment.pairwise_logits
    shape = (k,) if judgment.pairwise_logits is None else (k, k)
    raw = np.asarray(raw, dtype=np.float64)
    if raw.shape != shape:
        raise ValueError(f"the judge returned shape {raw.shape} for {k} responses, expected {shape}")
    if not np.all(np.isfinite(raw)):
        raise ValueError(f"the judge returned a non-finite value ({raw.tolist()})")


def judge_groups(judge, groups: list[tuple[int, str, list[str]]], chunk: int | None = None, desc: str = "judge",
                 token_ids: list[tuple[list[int], list[list[int]]]] | None = None) -> list[Judgment]:
    """Judge (prompt_id, prompt, responses) groups, `chunk` prompts per judge call (default: the
    judge's `prompts_per_call`, else 1, so a scoring function's progress moves per prompt).

    Empty responses are handled here (see _with_empty_responses), so every judge sees only
    non-empty text; a group with fewer than two non-empty responses needs no judge call.
    token_ids (per group: prompt ids, response ids, as sampled) go to judges that take them.
    A judge with `submit`/`result` (a Ray actor) gets the next call before the last returns.
    An error from a call names its prompt_id.
    """
    pass_ids = token_ids is not None and getattr(judge, "takes_token_ids", False)
    chunk = chunk or getattr(judge, "prompts_per_call", 1)
    judgments, pending = [], deque()

    def ask(start: int):
        part = groups[start:start + chunk]
        nonempty = [[i for i, r in enumerate(responses) if r.strip()] for _, _, responses in part]
        asked = [j for j, keep in enumerate(nonempty) if len(keep) >= 2]
        extra = {}
        if pass_ids:
            extra["token_ids"] = [(token_ids[start + j][0], [token_ids[start + j][1][i] for i in nonempty[j]])
                                  for j in asked]
        prompts, responses = [part[j][1] for j in asked], [[part[j][2][i] for i in nonempty[j]] for j in asked]
        call = {"part": part, "nonempty": nonempty, "asked": asked, "answers": []}
        try:
            if asked and hasattr(judge, "submit"):
                call["ref"] = judge.submit(prompts, responses, **extra)
            elif asked:
                call["answers"] = judge.judge(prompts, responses, **extra)
        except Exception as error:
            raise _judge_error(error, [part[j][0] for j in asked]) from error
        return call

    def collect(call) -> None:
        part, nonempty, asked = call["part"], call["nonempty"], call["asked"]
        try:
            answers = judge.result(call["ref"]) if "ref" in call else call["answers"]
            if len(answers) != len(asked):
                raise ValueError(f"the judge returned {len(answers)} judgments for {len(asked)} prompts")
            for j, judgment in zip(asked, answers):
                _check_judgment(judgment, len(nonempty[j]))
        except Exception as error:
            raise _judge_error(error, [part[j][0] for j in asked]) from error
        answers = dict(zip(asked, answers))
        for j, (_, _, responses) in enumerate(part):
            judgment = answers.get(j)
            if len(nonempty[j]) < len(responses) or judgment is None:
                judgment = _with_empty_responses(judgment, nonempty[j], len(responses))
            judgments.append(judgment)
        bar.update(len(part))

    with tqdm(total=len(groups), desc=desc, unit="prompt", leave=False) as bar:
        for start in range(0, len(groups), chunk):
            pending.append(ask(start))
            if len(pending) >= IN_FLIGHT or "ref" not in pending[-1]:
                collect(pending.popleft())
        while pending:
            collect(pending.popleft())
    return judgments


def stage_temperature(setting, judgments: list[Judgment]) -> float | None:
    """The stage's Bradley-Terry temperature (None when no judgment has scalar scores)."""
    score_groups = [j.scores for j in judgments if j.pairwise_logits is None]
    return wm.resolve_temperature(setting, score_groups) if score_groups else None


def signal_report(judgments: list[Judgment], matrices: list[np.ndarray], what: str) -> tuple[float, list[str]]:
    """(share of prompts whose Phat all lie within 0.01 of 0.5, warnings for the manifest and log)."""
    if not judgments:
        return 0.0, []
    fraction = float(np.mean([wm.has_no_signal(m) for m in matrices]))
    if all(np.all(j.wins() == 0.5) for j in judgments):
        return fraction, [f"{what}: no signal: every comparison of every prompt is a tie ({len(judgments)} prompts); "
                          f"the judge cannot tell the samples apart"]
    if fraction >= NO_SIGNAL_WARN_FRACTION:
        return fraction, [f"{what}: almost no signal: Phat is within {wm.NO_SIGNAL_TOLERANCE} of 0.5 for "
                          f"{fraction:.0%} of prompts (a fixed annotate.temperature much larger than the "
                          f"scores' spread does this; annotate.temperature=auto scales to them)"]
    return fraction, []


def judgments_table(groups, judgments: list[Judgment], rule: str, temperature) -> tuple[pa.Table, dict, list[str]]:
    """(judgments.parquet, the stage's metrics, its warnings); `temperature` is "auto" or a float."""
    resolved = stage_temperature(temperature, judgments)
    rows, matrices = [], []
    for (prompt_id, _, responses), judgment in zip(groups, judgments):
        k = len(responses)
        matrix = judgment.win_matrix(rule, resolved or 1.0)
        if matrix.shape != (k, k):
            raise ValueError(f"judge returned a {matrix.shape} matrix for {k} responses of prompt {prompt_id}")
        matrices.append(matrix)
        scalar = judgment.pairwise_logits is None
        rows.append({"prompt_id": prompt_id, "num_samples": k,
                     "scores": judgment.filled_scores(resolved).tolist() if scalar else None,
                     "pairwise_logits": None if scalar else np.asarray(judgment.pairwise_logits, float).ravel().tolist(),
                     "temperature": resolved if scalar else None,
                     "win_matrix": matrix.ravel().tolist()})
    fraction, warnings = signal_report(judgments, matrices, "annotate")
    metrics = {"prompts": len(rows), "temperature": resolved, "no_signal_fraction": fraction}
    if resolved is not None:
        metrics["score_spread"] = wm.score_spread([j.scores for j in judgments if j.pairwise_logits is None])
    return pa.Table.from_pylist(rows), metrics, warnings


def win_matrix_of(row: dict) -> np.ndarray:
    k = row["num_samples"]
    return np.asarray(row["win_matrix"], dtype=np.float64).reshape(k, k)
