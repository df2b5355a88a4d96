"""Reward-model judge on a tiny random Llama classifier (tiny:reward)."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from selfplay.judging.reward_model import RewardModelJudge
from selfplay.models import resolve_model

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]
RESPONSES = [["Paris.", "It is Paris, on the Seine.", "London"],
             ["Waves fold on the sand, " * 5, "blue", "The sea is wide and deep."]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SELFPLAY_CACHE", str(tmp_path_factory.mktemp("cache")))
        return resolve_model("tiny:reward", seed=0)


@pytest.fixture(scope="module")
def judge(checkpoint):
    return RewardModelJudge(str(checkpoint), batch_tokens=4096)


def test_score_is_the_classifier_output_on_the_chat_formatted_conversation(checkpoint, judge):
    scores = judge.judge(PROMPTS, RESPONSES)
    # By hand: the tiny template renders "<|user|>\n...<|end|>\n<|assistant|>\n...<|end|>\n".
    text = f"<|user|>\n{PROMPTS[0]}<|end|>\n<|assistant|>\n{RESPONSES[0][1]}<|end|>\n"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])).logits[0, 0]
    assert scores[0].scores[1] == pytest.approx(expected.item(), abs=1e-5)
    assert [s.scores.shape for s in scores] == [(3,), (3,)] and scores[0].pairwise_logits is None
    assert np.ptp(np.concatenate([s.scores for s in scores])) > 0.05  # visibly different scores


def test_token_budget_batches_equal_single_rows(checkpoint, judge):
    batched = judge.judge(PROMPTS, RESPONSES)
    single = RewardModelJudge(str(checkpoint), batch_tokens=1).judge(PROMPTS, RESPONSES)
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5)


def test_response_past_the_context_is_truncated(judge):
    """The context is 1024 tokens: text past it changes nothing."""
    long = "word " * 1500
    first, second = judge.judge(PROMPTS[:1] * 2, [[long, "short"], [long + "and more", "short"]])
    assert first.scores[0] == pytest.approx(second.scores[0], abs=1e-5)


def test_tokenizer_without_chat_template_is_rejected(checkpoint, tmp_path):
    copy = tmp_path / "rm"
    shutil.copytree(checkpoint, copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no chat_template"):
        RewardModelJudge(str(copy))


def test_missing_weights_are_rejected(checkpoint, tmp_path):
    copy = tmp_path / "rm"
    shutil.copytree(checkpoint, copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="missing its weights file"):
        RewardModelJudge(str(copy))


@pytest.mark.parametrize("responses, message", [([["only one"]], "K >= 2"),
                                                ([["", "fine"]], r"responses\[0\]\[0\] is an empty string")])
def test_bad_responses_are_rejected(judge, responses, message):
    with pytest.raises(ValueError, match=message):
        judge.judge(["a prompt"], responses)
