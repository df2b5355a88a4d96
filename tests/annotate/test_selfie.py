"""Selfie judge: score = summed logp under the policy minus under the fixed reference."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfplay.judging.selfie import SelfieJudge
from selfplay.models.tiny_pairrm import build_deberta_tokenizer
from selfplay.models.tiny_policy import build_tiny_policy

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]
RESPONSES = [["Paris.", "It is Paris, on the Seine.", "London"],
             ["Waves fold on the sand, " * 5, "blue", "The sea is wide and deep."]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("selfie")
    return build_tiny_policy(root / "policy", seed=1), build_tiny_policy(root / "reference", seed=0)


@pytest.fixture(scope="module")
def judge(models):
    return SelfieJudge(str(models[0]), str(models[1]), batch_tokens=4096)


def summed_logp(path, prompt, response):
    """By hand: the chat-formatted prompt, then the response and <|end|>; sum log p of the latter."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    prompt_ids = tokenizer(f"<|user|>\n{prompt}<|end|>\n<|assistant|>\n", add_special_tokens=False).input_ids
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    response_ids = tokenizer(response, add_special_tokens=False).input_ids + [end]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(logprobs[len(prompt_ids) + t - 1, token].item() for t, token in enumerate(response_ids))


def test_score_is_policy_minus_reference_logp(models, judge):
    judgments = judge.judge(PROMPTS, RESPONSES)
    expected = summed_logp(models[0], PROMPTS[1], RESPONSES[1][2]) - summed_logp(models[1], PROMPTS[1], RESPONSES[1][2])
    assert judgments[1].scores[2] == pytest.approx(expected, abs=1e-4)
    assert [j.scores.shape for j in judgments] == [(3,), (3,)]
    assert np.ptp(np.concatenate([j.scores for j in judgments])) > 0.1


def logp_of_ids(path, prompt_ids, response_ids):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([prompt_ids + response_ids])).logits[0].double(), -1)
    return sum(logprobs[len(prompt_ids) + t - 1, token].item() for t, token in enumerate(response_ids))


def test_sampled_token_ids_are_scored_as_they_are(models, judge):
    """A run passes the sampler's ids: the score is the log-ratio of exactly that sequence, even
    when the sampler split the text differently than the tokenizer would (here: one token split
    into its characters, and no end token, as a sample cut at max_tokens)."""
    tokenizer = AutoTokenizer.from_pretrained(models[0])
    prompt_ids = tokenizer(f"<|user|>\n{PROMPTS[0]}<|end|>\n<|assistant|>\n", add_special_tokens=False).input_ids
    canonical = tokenizer("It is Paris", add_special_tokens=False).input_ids
    pieces = tokenizer.convert_ids_to_tokens(canonical)
    split = next(i for i, piece in enumerate(pieces) if len(piece) > 1 and piece.isalpha())  # "ar" of "Paris"
    by_character = canonical[:split] + tokenizer.convert_tokens_to_ids(list(pieces[split])) + canonical[split + 1:]
    assert by_character != canonical and tokenizer.decode(by_character) == tokenizer.decode(canonical)
    text_path = judge.judge(PROMPTS[:1], [["It is Paris", "Paris."]])[0].scores
    ids_path = judge.judge(PROMPTS[:1], [["It is Paris", "Paris."]],
                           token_ids=[(prompt_ids, [by_character, canonical])])[0].scores
    for k, ids in enumerate([by_character, canonical]):
        expected = logp_of_ids(models[0], prompt_ids, ids) - logp_of_ids(models[1], prompt_ids, ids)
        assert ids_path[k] == pytest.approx(expected, abs=1e-4)
    assert abs(ids_path[0] - text_path[0]) > 1e-3  # the text path would have scored another sequence
    with pytest.raises(ValueError, match="token_ids must hold"):
        judge.judge(PROMPTS[:1], [["a", "b"]], token_ids=[(prompt_ids, [canonical])])


def test_policy_equal_to_reference_scores_zero(models):
    same = SelfieJudge(str(models[1]), str(models[1]))
    for judgment in same.judge(PROMPTS, RESPONSES):
        np.testing.assert_array_equal(judgment.scores, 0.0)


def test_token_budget_batches_equal_single_rows(models, judge):
    single = SelfieJudge(str(models[0]), str(models[1]), batch_tokens=1)
    for a, b in zip(judge.judge(PROMPTS, RESPONSES), single.judge(PROMPTS, RESPONSES)):
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-4)


def test_response_past_the_context_is_truncated_and_overlong_prompt_rejected(judge):
    long = "word " * 1500  # the tiny policy's context is 1024 tokens
    first, second = judge.judge(PROMPTS[:1] * 2, [[long, "short"], [long + "and more", "short"]])
    assert first.scores[0] == pytest.approx(second.scores[0], abs=1e-3)
    with pytest.raises(ValueError, match=r"prompts\[0\] has \d+ tokens"):
        judge.judge([long], [["a", "b"]])


def test_tokenizer_without_chat_template_is_rejected(models, tmp_path):
    copy = tmp_path / "policy"
    shutil.copytree(models[0], copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no chat_template"):
        SelfieJudge(str(copy), str(models[1]))


def test_reference_with_another_tokenizer_is_rejected(models, tmp_path):
    copy = tmp_path / "reference"
    shutil.copytree(models[1], copy)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (copy / name).unlink(missing_ok=True)
    build_deberta_tokenizer().save_pretrained(copy)
    with pytest.raises(ValueError, match="differs from the policy"):
        SelfieJudge(str(models[0]), str(copy))


@pytest.mark.parametrize("responses, message", [([["only one"]], "K >= 2"),
                                                ([["fine", ""]], r"responses\[0\]\[1\] is an empty string")])
def test_bad_responses_are_rejected(judge, responses, message):
    with pytest.raises(ValueError, match=message):
        judge.judge(["a prompt"], responses)
