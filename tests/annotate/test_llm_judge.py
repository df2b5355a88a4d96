"""The LLM judge's pure parts (selfplay/judging/llm_rubric.py, llm_judge.py) on hand-checked
values: reading an answer, the expected rating, a response's score from its aspect ratings
(missing ones left out, never a silent 0), the pairwise matrix with position bias cancelled,
the questions asked, and retries of unusable answers."""

import math

import numpy as np
import pytest

from selfplay.judging import llm_rubric as rubric
from selfplay.judging.llm_judge import Answer, LLMJudge, pairwise_judgment, questions_for, scalar_judgment, verdict_token_ids
from selfplay.judging.registry import LLMJudgeConfig


def test_an_answer_is_its_verdict_and_rationale():
    assert rubric.parse_answer("4\nRationale: clear and correct.", rubric.RATINGS) == ("4", "clear and correct.")
    assert rubric.parse_answer("2", rubric.RATINGS) == ("2", "")  # cut after the verdict: still usable
    assert rubric.parse_answer("B\nRationale: B is longer", rubric.SIDES) == ("B", "B is longer")
    assert rubric.parse_answer("", rubric.RATINGS) == (None, "")
    assert rubric.parse_answer("A", rubric.RATINGS) == (None, "")  # not a rating
    assert rubric.parse_answer("7\nRationale: x", rubric.RATINGS) == (None, "")
    pattern = rubric.answer_pattern(rubric.RATINGS)
    import re
    assert re.fullmatch(pattern, "5\nRationale: fine") and not re.fullmatch(pattern, "6\nRationale: x")


def test_the_expected_rating_weighs_the_ratings_by_their_probabilities():
    uniform = {r: math.log(0.2) for r in rubric.RATINGS}
    assert rubric.expected_rating(uniform) == pytest.approx(3.0)
    # mass elsewhere in the vocabulary is renormalized away: 4 and 5 equally likely -> 4.5
    assert rubric.expected_rating({"4": math.log(0.3), "5": math.log(0.3), "1": -math.inf}) == pytest.approx(4.5)
    assert rubric.expected_rating({"2": 0.0, "3": math.log(3)}) == pytest.approx(2 * 0.25 + 3 * 0.75)


def answer(verdict, **probabilities):
    return Answer(verdict=verdict, probabilities={k: math.log(v) for k, v in probabilities.items()} or None)


def test_a_responses_score_is_the_mean_of_its_aspect_ratings_and_missing_ones_are_left_out():
    aspects = ["honesty", "helpfulness"]
    answers = {(0, 0): answer("5"), (0, 1): answer("3"),
               (1, 0): answer("2"), (1, 1): Answer(),            # one aspect missing
               (2, 0): Answer(), (2, 1): Answer()}                # no rating at all
    judgment = scalar_judgment(answers, 3, aspects, None, "argmax")
    assert judgment.scores.tolist() == pytest.approx([4.0, 2.0, 3.0])  # the third: its prompt's mean, a tie
    assert np.isnan(judgment.ratings[1][1]) and judgment.ratings[0] == [5.0, 3.0]
    weighted = scalar_judgment(answers, 3, aspects, {"honesty": 3.0, "helpfulness": 1.0}, "argmax")
    assert weighted.scores[0] == pytest.approx((5 * 3 + 3) / 4)
    expected = scalar_judgment({(0, 0): answer("4", **{"4": 0.5, "5": 0.5})}, 1, ["honesty"], None, "expected")
    assert expected.scores.tolist() == pytest.approx([4.5])
    nothing = scalar_judgment({(0, 0): Answer(), (1, 0): Answer()}, 2, ["honesty"], None, "argmax")
    assert nothing.scores.tolist() == [0.0, 0.0]
    assert "honesty: missing" in nothing.rationales[0]


def test_pairwise_averages_both_orders_so_position_bias_cancels():
    always_a = {(i, j): answer("A") for i in range(3) for j in range(3) if i != j}
    assert np.allclose(pairwise_judgment(always_a, 3, "argmax").pairwise_logits, 0.0)
    # response 0 preferred in both orders; 1 vs 2 a coin flip (one order missing)
    answers = {(0, 1): answer("A"), (1, 0): answer("B"), (0, 2): answer("A"), (2, 0): answer("B"),
               (1, 2): answer("A"), (2, 1): Answer()}
    logits = pairwise_judgment(answers, 3, "argmax").pairwise_logits
    assert logits[0, 1] > 9 and logits[0, 2] > 9 and np.allclose(logits, -logits.T)
    assert logits[1, 2] == pytest.approx(math.log(0.75 / 0.25))  # (1 + 1 - 0.5) / 2
    soft = pairwise_judgment({(0, 1): answer("A", A=0.8, B=0.2), (1, 0): answer("A", A=0.6, B=0.4)}, 2, "expected")
    assert soft.pairwise_logits[0, 1] == pytest.approx(math.log(0.6 / 0.4))  # (0.8 + 0.4) / 2


def settings(**changes):
    return LLMJudgeConfig(path="tiny:llama", **changes).model_dump(mode="json")


def test_the_questions_asked():
    prompts, responses = ["p1", "p2"], [["a", "b", "c"], ["d", "e"]]
    assert len(questions_for(settings(), prompts, responses, None)) == 5 * 4
    pairwise = questions_for(settings(rubric="pairwise"), prompts, responses, None)
    assert len(pairwise) == 3 * 2 + 2 * 1 and {q.verdicts for q in pairwise} == {rubric.SIDES}
    assert "Response A: a" in pairwise[0].text and "Response B: b" in pairwise[0].text
    custom = questions_for(settings(rubric="custom", template="t.txt"), prompts, responses, "Q: {prompt} / A: {response}")
    assert [q.text for q in custom][:2] == ["Q: p1 / A: a", "Q: p1 / A: b"]
    question = rubric.rating_question("honesty", "Why?", "Because.")
    assert "Instruction: Why?" in question and "Response: Because." in question and "Honesty" in question


def test_the_verdict_tokens_of_the_tiny_tokenizer(tiny_policy):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    ids = verdict_token_ids(tokenizer, rubric.RATINGS)
    assert [tokenizer.decode([ids[r]]) for r in rubric.RATINGS] == list(rubric.RATINGS)
    text = rubric.judge_prompt(tokenizer, "Rate it.", rubric.RATING_PREFIX)
    assert text.endswith("Rating: ") and tokenizer.apply_chat_template(
        [{"role": "user", "content": "Rate it."}], tokenize=False, add_generation_prompt=True) in text


def test_unusable_answers_are_asked_again_then_counted_missing():
    judge = object.__new__(LLMJudge)
    judge.settings = settings(retries=2)
    calls = []

    def fake_generate(questions, answers, attempt):  # the first question never answers, the second on try 2
        calls.append(len(questions))
        for question, each in zip(questions, answers):
            each.attempts += 1
            if question.text == "second" and attempt == 1:
                each.verdict, each.probabilities = "3", {"3": 0.0}

    judge._generate = fake_generate
    from selfplay.judging.llm_judge import Question

    answers = judge.ask([Question("first", rubric.RATINGS, 0, (0, 0)), Question("second", rubric.RATINGS, 0, (1, 0))])
    assert calls == [2, 2, 1]  # both, both again, then only the one still unusable
    assert answers[0].verdict is None and answers[0].attempts == 3
    assert answers[1].verdict == "3" and answers[1].attempts == 2


@pytest.mark.parametrize("section, message", [
    ({"rubric": "custom"}, "template: rubric custom needs a template file"),
    ({"template": "t.txt"}, "template: only rubric custom reads a template"),
    ({"aspect_weights": {"honesty": 1.0}}, "aspect_weights: give a weight for each of aspects"),
    ({"aspects": ["style"]}, "aspects"),
    ({"rubric": "pairwise", "shaping": "par"}, "shaping: rubric pairwise gives pairwise logits"),
    ({"max_tokens": 64, "max_model_len": 32}, "max_model_len: 32 leaves no room for a question before max_tokens (64)"),
])
def test_bad_settings(section, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LLMJudgeConfig(path="tiny:llama", **section)


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2"])
def test_the_chat_wrap_renders_as_the_template_does(family):
    from transformers import AutoTokenizer

    from selfplay.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(f"tiny:{family}", seed=0))
    before, after = rubric.chat_wrap(tokenizer)
    question = rubric.rating_question("helpfulness", "Name a colour.\nOne word.", "  Blue, {maybe}.")
    assert before + question + after + rubric.RATING_PREFIX == rubric.judge_prompt(tokenizer, question, rubric.RATING_PREFIX)
