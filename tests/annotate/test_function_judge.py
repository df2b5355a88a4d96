"""The function judge's contract and timeout: real child processes running real (misbehaving)
scoring functions from tests/annotate/scoring_fixtures.py, through judge_groups as the
annotate stage calls it. Every test that could hang has its own deadline."""

import signal
import time
from contextlib import contextmanager

import numpy as np
import pytest

from selfplay.judging.base import JudgeTimeout
from selfplay.judging.calls import judge_groups
from selfplay.judging.function import FunctionJudge, ScoreError

FIXTURES = "scoring_fixtures"  # tests/annotate is on sys.path under pytest, and the child inherits it


@contextmanager
def deadline(seconds: float):
    """Fail the test (instead of hanging the suite) if the block runs past `seconds`."""
    def expire(*_):
        raise TimeoutError(f"the test's own deadline of {seconds} s passed")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def judges():
    made = []

    def make(name, timeout=None):
        made.append(FunctionJudge(f"{FIXTURES}:{name}", timeout=timeout))
        return made[-1]

    yield make
    for judge in made:
        judge.shutdown()


def test_real_numbers_are_scores(judges):
    judge = judges("returns")
    with deadline(60):
        [judgment] = judge_groups(judge, [(4, "p", ["int", "float", "np.float32", "np.int64"])])
    np.testing.assert_array_equal(judgment.scores, [3.0, 0.25, 0.5, -2.0])
    assert judgment.scores.dtype == np.float64


@pytest.mark.parametrize("bad", ["bool", "np.bool", "nan", "inf", "str", "none", "array"])
def test_anything_else_is_refused_with_the_prompt_named(judges, bad):
    judge = judges("returns")
    with deadline(60), pytest.raises(ScoreError) as caught:
        judge_groups(judge, [(0, "p", ["int", "float"]), (17, "q", ["float", bad])])
    message = str(caught.value)
    assert "\n" not in message and message.startswith("prompt_id 17: ")
    assert "for response 1" in message and "finite real number" in message


def test_a_scoring_function_that_raises_names_the_prompt_and_keeps_its_traceback(judges):
    with deadline(60), pytest.raises(ScoreError) as caught:
        judge_groups(judges("raises"), [(9, "p", ["a", "b"])])
    assert str(caught.value) == ("prompt_id 9: annotate.function scoring_fixtures:raises raised KeyError: "
                                 "'no score for this one'")
    assert "scoring_fixtures.py" in str(caught.value.__cause__.__cause__)  # the child's own traceback


def test_a_scoring_function_that_kills_its_process_is_reported(judges):
    with deadline(60), pytest.raises(ScoreError, match=r"prompt_id 2: .*its process died \(exit code 3\)"):
        judge_groups(judges("exits"), [(2, "p", ["a", "b"])])


@pytest.mark.parametrize("name", ["sleeps_on_stuck_prompts", "holds_the_gil_on_stuck_prompts"])
def test_a_hung_scoring_function_fails_within_the_timeout_naming_the_prompt(judges, name):
    judge = judges(name, timeout=3)
    groups = [(0, "fine", ["a", "bb"]), (1, "fine too", ["a", "bb"]), (42, "stuck here", ["a", "bb"]),
              (3, "never reached", ["a", "bb"])]
    with deadline(60):
        judge_groups(judge, groups[:1])  # the child is up: what follows times the stuck call alone
        started = time.monotonic()
        with pytest.raises(JudgeTimeout) as caught:
            judge_groups(judge, groups)
        waited = time.monotonic() - started
    assert str(caught.value) == (f"prompt_id 42: annotate.function scoring_fixtures:{name} did not return within "
                                 f"annotate.timeout_seconds=3 (its process was killed)")
    assert 3 <= waited < 10, waited
    assert judge.process is None  # killed; the judge starts a fresh child if asked again
    with deadline(60):
        assert judge_groups(judge, groups[:1])[0].scores.tolist() == [1.0, 2.0]


class CountingJudge:
    """Records how many prompts each call carried."""

    def __init__(self):
        self.calls = []

    def judge(self, prompts, responses):
        from selfplay.judging.base import Judgment

        self.calls.append(len(prompts))
        return [Judgment(scores=np.arange(len(group), dtype=float)) for group in responses]


def test_judges_are_asked_one_prompt_at_a_time(monkeypatch):
    """Progress moves per prompt (the bar advanced per 64-prompt chunk before)."""
    updates = []
    from selfplay.judging import calls as stage

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *args):
            pass

        def update(self, n):
            updates.append(n)

    monkeypatch.setattr(stage, "tqdm", Bar)
    judge = CountingJudge()
    judge_groups(judge, [(i, "p", ["a", "b", "c"]) for i in range(70)])
    assert judge.calls == [1] * 70 and updates == [1] * 70


def test_the_scoring_process_ends_quietly_when_the_driver_is_gone():
    """Issue 19 finding 15: after a SIGKILL of the driver the child's request pipe is closed; it
    ends with exit code 0 instead of an EOFError traceback in the run's log."""
    import multiprocessing

    from selfplay.judging.function import _serve

    context = multiprocessing.get_context("spawn")
    child_requests, driver_requests = context.Pipe(duplex=False)
    driver_replies, child_replies = context.Pipe(duplex=False)
    process = context.Process(target=_serve, args=("selfplay.judges:letter_e_count", child_requests, child_replies))
    process.start()
    child_requests.close()
    child_replies.close()
    assert driver_replies.recv() == ("ready",)
    driver_requests.close()   # as the kernel does for a killed driver
    process.join(timeout=60)
    assert process.exitcode == 0
