"""Running a judge over groups of responses: one prompt's K responses are judged together.

Model judges run in Ray actors with their own resource request (`replicas` of them share a
stage's calls); the function judge runs in a child process (judging/function.py). A scoring
function is asked one prompt at a time, so progress moves per prompt; a model judge gets
`RemoteJudge.prompts_per_call` prompts per call, which it packs into token-budget batches. A
call past the judge's `timeout_seconds` fails the stage with a line naming its prompt(s).
Used by the annotate stage (training judgments) and the evaluate stage (win rates).

Scalar scores are scale-free (`temperature: auto`, see win_matrix.py): the temperature is
resolved once per stage from all of its scores. Judgments that carry no signal (every
comparison a tie, or Phat within 0.01 of 0.5 for at least 90% of prompts) are reported by
`signal_report`.
"""

import logging
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import ray
from tqdm import tqdm

from selfplay import runs
from selfplay.cluster import where_it_runs
from selfplay.judging import win_matrix as wm
from selfplay.judging.base import JudgeTimeout, Judgment, ScoreError

log = logging.getLogger("selfplay")
# Share of prompts without signal from which a stage warns ("nearly every prompt").
NO_SIGNAL_WARN_FRACTION = 0.9
# Calls kept queued at a Ray judge, so it never idles while the driver handles a result.
IN_FLIGHT = 2


class RemoteJudge:
    """A judge living in `replicas` Ray actors (data parallel); `judge()` has the same signature
    as a local one and runs on the first actor.

    `submit` (to one replica) / `first_ready` / `result` let judge_groups keep calls queued at
    every replica; every wait (the actors' start-up included) ends at `timeout` seconds.
    """

    # Prompts per call: a model judge packs all pairs of a call into token-budget batches, so
    # one prompt (K*(K-1) PairRM pairs) per call would leave a GPU mostly idle.
    prompts_per_call = 32

    def __init__(self, cls, args: dict, num_gpus: float = 0.0, timeout: float | None = None, replicas: int = 1):
        self.takes_token_ids = getattr(cls, "takes_token_ids", False)
        self.prompts_per_call = getattr(cls, "prompts_per_call", RemoteJudge.prompts_per_call)
        self.timeout = timeout
        self.num_gpus = num_gpus
        self.started = False
        remote = ray.remote(num_cpus=1, num_gpus=num_gpus)(cls)
        if replicas > 1:  # data-parallel replicas go to different nodes where they can, as engine replicas do
            remote = remote.options(scheduling_strategy="SPREAD")
        self.actors = [remote.remote(**args) for _ in range(replicas)]

    @property
    def replicas(self) -> int:
        return len(self.actors)

    @property
    def actor(self):
        """The first replica's actor (the only one of a single-replica judge)."""
        return self.actors[0]

    def _get(self, ref, what: str):
        try:
            return ray.get(ref, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            raise self.timed_out(what) from None

    def timed_out(self, what: str) -> JudgeTimeout:
        """Kill the actors (one is stuck; a later stage starts fresh ones) and say what timed out."""
        self.shutdown()
        killed = "its actor was killed" if self.replicas == 1 else f"its {self.replicas} actors were killed"
        return JudgeTimeout.after("the judge", what, self.timeout, killed)

    def start(self) -> None:
        """Wait until every replica has loaded its model: not a judge call, so it gets its own
        deadline (the replicas load in parallel)."""
        if not self.started:
            self._get([actor.__ray_ready__.remote() for actor in self.actors], "finish loading")
            self.started = True

    def submit(self, prompts, responses, replica: int = 0, **token_ids):
        self.start()
        return self.actors[replica].judge.remote(prompts, responses, **token_ids)

    @staticmethod
    def first_ready(refs: list, timeout: float | None):
        """The first of `refs` to finish (its result or its error), or None after `timeout` seconds."""
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        return ready[0] if ready else None

    def result(self, ref):
        return self._get(ref, "return")

    def placement(self) -> list[dict]:
        """Each replica's Ray node, host IP, PID and resources (for a stage's manifest)."""
        where = self._get([actor.__ray_call__.remote(where_it_runs) for actor in self.actors], "say where it runs")
        return [{**each, "resources": {"CPU": 1, "GPU": self.num_gpus}} for each in where]

    def judge(self, prompts, responses, **token_ids):
        return self.result(self.submit(prompts, responses, **token_ids))

    def shutdown(self):
        for actor in self.actors:
            ray.kill(actor)


def _judge_error(error: Exception, prompt_ids: list) -> Exception:
    """The same error with the prompt(s) it was on in front; other error types pass unchanged
    (a dead Ray worker must stay a RayActorError for the driver's retry)."""
    if type(error) not in (JudgeTimeout, ScoreError, ValueError):
        return error
    where = ", ".join(str(p) for p in prompt_ids[:4]) + (f", ... ({len(prompt_ids)} prompts in the call)"
                                                         if len(prompt_ids) > 4 else "")
    return type(error)(f"prompt_id {where}: {error}")


def _with_empty_responses(judgment: Judgment | None, nonempty: list[int], k: int) -> Judgment:
    """Put the judged responses back among the empty ones: NaN scores (filled relative to the
    stage's temperature, win_matrix.fill_empty_scores) or a logit gap of EMPTY_RESPONSE_GAP.
    An LLM judge's counts stay; its per-response ratings and rationales get None for the empty ones."""
    if judgment is not None and judgment.pairwise_logits is not None:
        logits = np.zeros((k, k))
        logits[np.ix_(nonempty, nonempty)] = judgment.pairwise_logits
        empty = [i for i in range(k) if i not in nonempty]
        logits[np.ix_(nonempty, empty)] = wm.EMPTY_RESPONSE_GAP
        logits[np.ix_(empty, nonempty)] = -wm.EMPTY_RESPONSE_GAP
        placed = Judgment(pairwise_logits=logits)
    else:
        known = np.zeros(len(nonempty)) if judgment is None else np.asarray(judgment.scores, dtype=np.float64)
        scores = np.full(k, np.nan)
        scores[nonempty] = known
        placed = Judgment(scores=scores)
    if judgment is not None:
        placed.answers, placed.retried = judgment.answers, judgment.retried
        placed.missing, placed.too_long = judgment.missing, judgment.too_long
        for field in ("ratings", "rationales"):
            if getattr(judgment, field) is not None:
                values = [None] * k
                for index, value in zip(nonempty, getattr(judgment, field)):
                    values[index] = value
                setattr(placed, field, values)
    return placed


def _check_judgment(judgment: Judgment, k: int) -> None:
    """A judge's output has the right shape and finite numbers (NaN is reserved for empty responses)."""
    raw = judgment.scores if judgment.pairwise_logits is None else judgment.pairwise_logits
    shape = (k,) if judgment.pairwise_logits is None else (k, k)
    raw = np.asarray(raw, dtype=np.float64)
    if raw.shape != shape:
        raise ValueError(f"the judge returned shape {raw.shape} for {k} responses, expected {shape}")
    if not np.all(np.isfinite(raw)):
        raise ValueError(f"the judge returned a non-finite value ({raw.tolist()})")


@dataclass
class _Call:
    """One judge call: `part` of the groups, each group's non-empty responses (indices), the
    groups asked (>= 2 non-empty responses) and the token ids that go with them."""

    part: list
    nonempty: list[list[int]]
    asked: list[int]
    extra: dict

    @property
    def prompts(self) -> list[str]:
        return [self.part[j][1] for j in self.asked]

    @property
    def responses(self) -> list[list[str]]:
        return [[self.part[j][2][i] for i in self.nonempty[j]] for j in self.asked]

    @property
    def prompt_ids(self) -> list:
        return [self.part[j][0] for j in self.asked]


def _calls(groups, chunk: int, token_ids) -> list[_Call]:
    calls = []
    for start in range(0, len(groups), chunk):
        part = groups[start:start + chunk]
        nonempty = [[i for i, r in enumerate(responses) if r.strip()] for _, _, responses in part]
        asked = [j for j, keep in enumerate(nonempty) if len(keep) >= 2]
        extra = {}
        if token_ids is not None:
            extra["token_ids"] = [(token_ids[start + j][0], [token_ids[start + j][1][i] for i in nonempty[j]])
                                  for j in asked]
        calls.append(_Call(part, nonempty, asked, extra))
    return calls


def _checked(call: _Call, answers) -> list[Judgment]:
    if len(answers) != len(call.asked):
        raise ValueError(f"the judge returned {len(answers)} judgments for {len(call.asked)} prompts")
    for j, judgment in zip(call.asked, answers):
        _check_judgment(judgment, len(call.nonempty[j]))
    return answers


def _local_answers(judge, calls: list[_Call]):
    """(call, its answers) in order, one call at a time."""
    for call in calls:
        try:
            answers = _checked(call, judge.judge(call.prompts, call.responses, **call.extra)) if call.asked else []
        except Exception as error:
            raise _judge_error(error, call.prompt_ids) from error
        yield call, answers


def _remote_answers(judge, calls: list[_Call]):
    """(call, its answers) in call order, the calls spread over the judge's replicas.

    Each replica keeps IN_FLIGHT calls queued (it never idles while the driver handles a
    result) and gets the next call when one of its own returns, so a slower replica takes
    fewer calls. A replica runs its calls in order: its oldest call is waited on for at most
    the judge's timeout from when it became the oldest.
    """
    todo = deque(index for index, call in enumerate(calls) if call.asked)
    queues = [deque() for _ in range(judge.replicas)]  # per replica: (call index, ref), oldest first
    since = [0.0] * judge.replicas  # when each replica's oldest call became its oldest
    answered = {}

    def fill() -> None:
        while todo and any(len(queue) < IN_FLIGHT for queue in queues):
            for replica, queue in enumerate(queues):  # in turn: calls 0, 1, 2 go to replicas 0, 1, 2
                if todo and len(queue) < IN_FLIGHT:
                    index = todo.popleft()
                    call = calls[index]
                    try:
                        ref = judge.submit(call.prompts, call.responses, replica=replica, **call.extra)
                    except Exception as error:
                        raise _judge_error(error, call.prompt_ids) from error
                    if not queue:
                        since[replica] = time.monotonic()
                    queue.append((index, ref))

    def collect_one() -> None:
        busy = [replica for replica, queue in enumerate(queues) if queue]
        heads = [queues[replica][0][1] for replica in busy]
        wait = None if judge.timeout is None else max(min(since[r] for r in busy) + judge.timeout - time.monotonic(), 0)
        ready = judge.first_ready(heads, wait)
        if ready is None:  # the replica waited on longest is stuck
            stuck = min(busy, key=since.__getitem__)
            raise _judge_error(judge.timed_out("return"), calls[queues[stuck][0][0]].prompt_ids) from None
        replica = busy[heads.index(ready)]
        index, ref = queues[replica].popleft()
        since[replica] = time.monotonic()
        call = calls[index]
        try:
            answered[index] = _checked(call, judge.result(ref))
        except Exception as error:  # a dead actor stays a RayActorError (_judge_error)
            raise _judge_error(error, call.prompt_ids) from error

    for index, call in enumerate(calls):
        while call.asked and index not in answered:
            fill()
            collect_one()
        yield call, answered.pop(index, [])


def judge_groups(judge, groups: list[tuple[int, str, list[str]]], chunk: int | None = None, desc: str = "judge",
                 token_ids: list[tuple[list[int], list[list[int]]]] | None = None) -> list[Judgment]:
    """Judge (prompt_id, prompt, responses) groups, `chunk` prompts per judge call (default: the
    judge's `prompts_per_call`, else 1, so a scoring function's progress moves per prompt).

    Empty responses are handled here (see _with_empty_responses), so every judge sees only
    non-empty text; a group with fewer than two non-empty responses needs no judge call.
    token_ids (per group: prompt ids, response ids, as sampled) go to judges that take them.
    A judge with `submit`/`result` (Ray actors) gets its calls spread over its replicas, the
    next ones queued before the last return (_remote_answers); the judgments come back in the
    order of `groups` whatever replica judged them, and the calls are the same for any number
    of replicas, so the judgments are too. An error from a call names its prompt_id.
    """
    pass_ids = token_ids is not None and getattr(judge, "takes_token_ids", False)
    per_call = chunk or getattr(judge, "prompts_per_call", 1)
    if per_call is None:  # the judge batches a whole stage itself (an LLM judge): one call per replica
        per_call = max(1, -(-len(groups) // getattr(judge, "replicas", 1)))
    calls = _calls(groups, per_call, token_ids if pass_ids else None)
    answers = _remote_answers(judge, calls) if hasattr(judge, "submit") else _local_answers(judge, calls)
    judgments = []
    with tqdm(total=len(groups), desc=desc, unit="prompt", leave=False) as bar:
        for call, answer in answers:
            answer = dict(zip(call.asked, answer))
            for j, (_, _, responses) in enumerate(call.part):
                judgment = answer.get(j)
                if len(call.nonempty[j]) < len(responses) or judgment is None:
                    judgment = _with_empty_responses(judgment, call.nonempty[j], len(responses))
                judgments.append(judgment)
            bar.update(len(call.part))
    return judgments


def answer_counts(judgments: list[Judgment]) -> dict:
    """An LLM judge's answers, retried and missing ones (and their share) over a stage; {} for other judges."""
    answers = sum(j.answers for j in judgments)
    if not answers:
        return {}
    missing = sum(j.missing for j in judgments)
    return {"judge_answers": answers, "judge_retried": sum(j.retried for j in judgments), "judge_missing": missing,
            "judge_too_long": sum(j.too_long for j in judgments), "judge_missing_fraction": missing / answers}


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


def judge_config(config) -> dict:
    """What decides a judge's results: its recipe section (the timeout and the number of replicas
    change none: changing them re-judges nothing) and its identity extras (a scoring function's
    source digest). No shaping is left out, as before shaping existed: a new version re-judges nothing."""
    unchanging = {"timeout_seconds", "replicas"} | ({"shaping"} if config.shaping is None else set())
    return {**config.model_dump(mode="json", exclude=unchanging), **runs.judge_identity(config)}
