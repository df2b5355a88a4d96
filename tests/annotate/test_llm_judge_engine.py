"""The LLM judge through real vLLM (CPU), in-process, on tiny:judge (trained to rate by the share
of the letter 'e'): every rubric mode answers under constrained decoding and is read as its mode
says; the ratings follow the judge's rule; a question longer than the judge's context is
counted missing, not retried, never scored 0."""

import math

import numpy as np
import pytest

from selfplay.judging.llm_judge import LLMJudge
from selfplay.judging.registry import LLMJudgeConfig
from selfplay.models import resolve_model

pytestmark = pytest.mark.slow
E_RICH, E_POOR = "these trees see three geese", "a dull dry skull, plain and flat, a drab lump"


@pytest.fixture(scope="module")
def judge():
    config = LLMJudgeConfig(path="tiny:judge", max_tokens=24)
    return LLMJudge(str(resolve_model("tiny:judge", 0)), config.model_dump(mode="json"), seed=0, device="cpu")


def with_settings(judge, **changes):
    judge.settings = LLMJudgeConfig(path="tiny:judge", max_tokens=24, **changes).model_dump(mode="json")
    return judge


def test_ultrafeedback_ratings_follow_the_judges_rule(judge):
    [judgment] = with_settings(judge).judge(["Describe a park."], [[E_RICH, E_POOR]])
    assert judgment.answers == 8 and judgment.missing == 0 and judgment.retried == 0
    ratings = np.array(judgment.ratings)
    assert ratings.shape == (2, 4) and np.all((ratings >= 1) & (ratings <= 5))
    assert judgment.scores[0] > judgment.scores[1]  # more 'e', a higher rating on every aspect
    assert all(r.count("\n") == 3 for r in judgment.rationales)
    [argmax] = with_settings(judge, score="argmax").judge(["Describe a park."], [[E_RICH, E_POOR]])
    assert all(float(r).is_integer() for row in argmax.ratings for r in row)


def test_pairwise_and_custom_answer_and_are_read(judge, tmp_path):
    [pairwise] = with_settings(judge, rubric="pairwise").judge(["Describe a park."], [[E_RICH, E_POOR, "green"]])
    logits = pairwise.pairwise_logits
    assert pairwise.answers == 6 and pairwise.missing == 0
    assert np.allclose(logits, -logits.T) and np.all(np.isfinite(logits))
    template = tmp_path / "rubric.txt"
    template.write_text("Rate from 1 to 5.\nTask: {prompt}\nAnswer: {response}")
    custom = LLMJudgeConfig(path="tiny:judge", rubric="custom", template=str(template))
    judge.settings, judge.template = custom.model_dump(mode="json"), custom.template_text()
    [rated] = judge.judge(["Describe a park."], [[E_RICH, E_POOR]])
    assert rated.answers == 2 and rated.missing == 0 and len(rated.scores) == 2
    judge.template = None


def test_a_question_longer_than_the_context_is_missing_not_zero(judge):
    with_settings(judge)
    context = judge.context
    judge.context = 40  # shorter than any rubric question
    try:
        [judgment] = judge.judge(["Describe a park."], [[E_RICH, E_POOR]])
    finally:
        judge.context = context
    assert judgment.answers == 8 and judgment.missing == 8 and judgment.too_long == 8 and judgment.retried == 0
    assert judgment.scores.tolist() == [0.0, 0.0] and all(math.isnan(r) for row in judgment.ratings for r in row)
