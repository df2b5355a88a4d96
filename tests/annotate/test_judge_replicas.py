"""Judge replicas (`annotate.replicas`) on a real local Ray cluster: a judge of N actors gives
the judgments of one, every actor gets calls, a slow call holds up only its own replica, a
stuck replica times out naming its prompt, and a replica killed mid-stage fails it as a worker
failure (the driver's retry). Judge classes are defined inside the tests, so Ray ships them by
value to its workers."""

import os
import signal
import threading
import time

import numpy as np
import pytest
from test_function_judge import deadline

from selfplay.failures import is_worker_failure
from selfplay.judging.base import JudgeTimeout, Judgment
from selfplay.judging.calls import RemoteJudge, judge_config, judge_groups
from selfplay.judging.registry import RewardModelJudgeConfig, make_judge
from selfplay.recipe import RecipeError, parse_recipe

# ~20 prompts of 2-4 responses; one with an empty response, one with a single non-empty one.
GROUPS = [(100 + i, f"Question {i}: what is {i} plus {i}?",
           [f"It is {2 * i}.", f"{i}+{i}={2 * i}", "I do not know.", "Maybe"][: 2 + i % 3]) for i in range(20)]
GROUPS[5] = (105, GROUPS[5][1], ["", "Ten.", "It is 10."])
GROUPS[9] = (109, GROUPS[9][1], ["Eighteen.", " "])


def calls_per_replica(judge: RemoteJudge) -> list[int]:
    import ray

    return ray.get([actor.__ray_call__.remote(lambda self: self.calls) for actor in judge.actors])


def test_replicas_leave_the_judge_config_digest_alone():
    """Changing the number of judge replicas re-judges nothing."""
    one, two = RewardModelJudgeConfig(path="tiny:reward"), RewardModelJudgeConfig(path="tiny:reward", replicas=2)
    assert judge_config(one) == judge_config(two) and "replicas" not in judge_config(two)
    assert judge_config(one) != judge_config(RewardModelJudgeConfig(path="tiny:reward", batch_tokens=1024))


def test_zero_replicas_is_refused_naming_the_field():
    with pytest.raises(RecipeError, match=r"annotate\.replicas.*greater than or equal to 1"):
        parse_recipe({"prompts": {"path": "p.jsonl"}, "annotate": {"type": "reward_model", "path": "tiny:reward",
                                                                   "replicas": 0}}, check_paths=False)


def test_two_reward_model_replicas_judge_like_one(local_ray, monkeypatch):
    import selfplay.judging.reward_model as reward_model

    class CountingRewardModel(reward_model.RewardModelJudge):
        calls = 0

        def judge(self, prompts, responses, **token_ids):
            self.calls += 1
            return super().judge(prompts, responses, **token_ids)

    monkeypatch.setattr(reward_model, "RewardModelJudge", CountingRewardModel)  # what make_judge builds
    # both judges built first, so their three actors load the model at the same time
    judges = {replicas: make_judge(RewardModelJudgeConfig(path="tiny:reward", replicas=replicas, timeout_seconds=120),
                                   "unused-policy") for replicas in (1, 2)}
    results = {}
    try:
        with deadline(240):
            for replicas, judge in judges.items():
                assert judge.replicas == replicas
                results[replicas] = judge_groups(judge, GROUPS, chunk=4)  # 5 calls
                counts = calls_per_replica(judge)
                assert sum(counts) == 5 and min(counts) >= 1, counts   # every actor got calls, none lost
                assert len({each["pid"] for each in judge.placement()}) == replicas  # separate processes
    finally:
        for judge in judges.values():
            judge.shutdown()
    one, two = results[1], results[2]
    assert [len(j.scores) for j in two] == [len(g[2]) for g in GROUPS]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.scores, b.scores)         # NaN (empty response) on both sides
    assert np.ptp(np.concatenate([j.scores[~np.isnan(j.scores)] for j in one])) > 0.05  # real, distinct scores


def test_a_slow_call_holds_up_only_its_own_replica(local_ray):
    """Calls go to whichever replica has room, and the judgments still come back in order."""
    class SlowOnFirstPrompt:
        def __init__(self, device="cpu"):
            self.calls = 0

        def judge(self, prompts, responses):
            self.calls += 1
            time.sleep(3.0 if prompts[0].endswith("#0") else 0.05)
            return [Judgment(scores=np.arange(len(group)) + int(p.split("#")[1])) for p, group in zip(prompts, responses)]

    judge = RemoteJudge(SlowOnFirstPrompt, {}, timeout=60, replicas=2)
    groups = [(i, f"p#{i}", ["a", "b"]) for i in range(10)]
    with deadline(120):
        judgments = judge_groups(judge, groups, chunk=1)
        counts = calls_per_replica(judge)
    judge.shutdown()
    assert [j.scores[0] for j in judgments] == list(range(10))
    # replica 0 holds the slow call 0 and call 2 queued behind it; replica 1 takes all the rest
    assert counts == [2, 8], counts


def test_a_stuck_replica_times_out_naming_its_prompt(local_ray):
    class HangsOnStuckPrompts:
        def __init__(self, device="cpu"):
            pass

        def judge(self, prompts, responses):
            if any("stuck" in p for p in prompts):
                time.sleep(3600)
            return [Judgment(scores=np.arange(len(group), dtype=float)) for group in responses]

    judge = RemoteJudge(HangsOnStuckPrompts, {}, timeout=60, replicas=2)
    judge.start()  # a worker's start-up on a busy machine is not what this test times
    judge.timeout = 4
    groups = [(i, "stuck" if i == 2 else "fine", ["a", "b"]) for i in range(12)]
    with deadline(120):
        started = time.monotonic()
        with pytest.raises(JudgeTimeout) as caught:
            judge_groups(judge, groups, chunk=1)
        waited = time.monotonic() - started
    assert str(caught.value) == ("prompt_id 2: the judge did not return within annotate.timeout_seconds=4 "
                                 "(its 2 actors were killed)")
    assert 4 <= waited < 30, waited


def test_a_killed_replica_fails_the_stage_as_a_worker_failure(local_ray):
    class Slow:
        def __init__(self, device="cpu"):
            pass

        def judge(self, prompts, responses):
            time.sleep(0.3)
            return [Judgment(scores=np.arange(len(group), dtype=float)) for group in responses]

    judge = RemoteJudge(Slow, {}, timeout=60, replicas=2)
    judge.start()
    victim = judge.placement()[1]["pid"]
    assert victim != os.getpid()
    killer = threading.Timer(1.0, os.kill, (victim, signal.SIGKILL))  # mid-stage: 20 calls of 0.3 s on 2 replicas
    groups = [(i, f"p{i}", ["a", "b"]) for i in range(20)]
    with deadline(120):
        killer.start()
        try:
            with pytest.raises(Exception) as caught:
                judge_groups(judge, groups, chunk=1)
        finally:
            killer.join()
            judge.shutdown()
    assert is_worker_failure(caught.value), repr(caught.value)
