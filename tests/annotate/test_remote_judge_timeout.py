"""A model judge in a real Ray actor that hangs: ray.get's timeout fails the call, naming the
prompt, and kills the actor. Has its own deadline."""

import time

import numpy as np
import pytest
from test_function_judge import deadline

from selfplay.judging.base import JudgeTimeout, Judgment
from selfplay.judging.calls import RemoteJudge, judge_groups


@pytest.fixture(scope="module")
def ray_cluster():
    from selfplay.cluster import start_ray

    start_ray(None, 2)
    yield
    import ray

    ray.shutdown()


def test_a_hung_model_judge_fails_within_the_timeout_naming_the_prompt(ray_cluster):
    import ray

    class HangsOnStuckPrompts:  # defined here, so Ray ships it by value to its worker
        def __init__(self, device="cpu"):
            pass

        def judge(self, prompts, responses):
            if any("stuck" in p for p in prompts):
                time.sleep(3600)
            return [Judgment(scores=np.arange(len(group), dtype=float)) for group in responses]

    judge = RemoteJudge(HangsOnStuckPrompts, {}, timeout=5)
    groups = [(0, "fine", ["a", "b"]), (1, "fine", ["a", "b", "c"]), (8, "stuck", ["a", "b"]), (9, "later", ["a", "b"])]
    with deadline(120):
        assert [j.scores.tolist() for j in judge_groups(judge, groups[:2])] == [[0.0, 1.0], [0.0, 1.0, 2.0]]
        started = time.monotonic()
        with pytest.raises(JudgeTimeout) as caught:
            judge_groups(judge, groups, chunk=1)
        waited = time.monotonic() - started
        assert str(caught.value) == ("prompt_id 8: the judge did not return within annotate.timeout_seconds=5 "
                                     "(its actor was killed)")
        assert 5 <= waited < 30, waited
        with pytest.raises(ray.exceptions.RayActorError):  # the stuck actor is gone, not left running
            ray.get(judge.actor.judge.remote(["fine"], [["a", "b"]]), timeout=30)


def test_a_model_judge_gets_many_prompts_per_call(ray_cluster):
    """Model judges pack the pairs of many prompts into one batch (one prompt per call would
    leave a GPU idle); each judgment still lands on its own prompt."""
    class CallSize:
        def __init__(self, device="cpu"):
            pass

        def judge(self, prompts, responses):
            return [Judgment(scores=np.arange(len(group)) + 100 * len(prompts)) for group in responses]

    judge = RemoteJudge(CallSize, {}, timeout=60)
    groups = [(i, f"p{i}", ["a", "b", "c"][: 2 + i % 2]) for i in range(RemoteJudge.prompts_per_call + 3)]
    with deadline(120):
        judgments = judge_groups(judge, groups)
    assert [len(j.scores) for j in judgments] == [2 + i % 2 for i in range(len(groups))]
    assert {j.scores[0] for j in judgments[:RemoteJudge.prompts_per_call]} == {100 * RemoteJudge.prompts_per_call}
    assert {j.scores[0] for j in judgments[RemoteJudge.prompts_per_call:]} == {300}
    judge.shutdown()
