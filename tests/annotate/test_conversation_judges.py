"""Every judge on a conversation prompt (system turn, earlier turns, a last user turn): the reward
model scores the whole chat in its own template, PairRM and an LLM judge read every turn as
text, Selfie's text path builds the ids generation builds, and a scoring function gets the
messages. Real tiny models; the history must change what a judge sees, never be dropped."""

import numpy as np
import pytest
import torch

from selfplay.conversation import as_text, prompt_token_ids
from selfplay.models import resolve_model

CHAT = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Bleu."}, {"role": "user", "content": "Another one?"}]
RESPONSES = [["Rouge.", "Vert, comme l'herbe.", "Green"]]


def test_the_reward_model_scores_the_whole_chat_in_its_template():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from selfplay.judging.reward_model import RewardModelJudge

    folder = resolve_model("tiny:reward")
    [judgment] = RewardModelJudge(str(folder)).judge([CHAT], RESPONSES)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(CHAT + [{"role": "assistant", "content": RESPONSES[0][1]}], tokenize=False)
    assert text.startswith("<|system|>\nAnswer in French.<|end|>\n<|user|>\nName a colour.")
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])).logits[0, 0]
    assert judgment.scores[1] == pytest.approx(expected.item(), abs=1e-5)
    [last_turn_only] = RewardModelJudge(str(folder)).judge(["Another one?"], RESPONSES)
    assert not np.allclose(judgment.scores, last_turn_only.scores)   # the history is part of what it scores


def test_pairrm_reads_every_turn_as_its_source_text():
    from selfplay.judging.pairrm import PairRMJudge

    judge = PairRMJudge(str(resolve_model("tiny:pairrm")))
    [conversation] = judge.judge([CHAT], RESPONSES)
    [as_source] = judge.judge([as_text(CHAT)], RESPONSES)
    [last_turn_only] = judge.judge(["Another one?"], RESPONSES)
    assert np.array_equal(conversation.pairwise_logits, as_source.pairwise_logits)
    assert not np.allclose(conversation.pairwise_logits, last_turn_only.pairwise_logits)


def test_an_llm_judge_is_asked_about_the_whole_conversation():
    from selfplay.judging.llm_judge import questions_for
    from selfplay.judging.registry import LLMJudgeConfig

    for rubric in ("ultrafeedback", "pairwise"):
        settings = LLMJudgeConfig(path="tiny:llama", rubric=rubric).model_dump(mode="json")
        questions = questions_for(settings, [CHAT], RESPONSES, None)
        assert questions and all("SYSTEM: Answer in French.\nUSER: Name a colour.\nAssistant: Bleu.\n"
                                 "USER: Another one?" in q.text for q in questions)


def test_selfie_text_path_builds_the_ids_generation_builds():
    from transformers import AutoTokenizer

    from selfplay.judging.selfie import SelfieJudge

    policy, reference = resolve_model("tiny:llama"), resolve_model("tiny:llama", seed=1)
    judge = SelfieJudge(str(policy), str(reference))
    tokenizer = AutoTokenizer.from_pretrained(policy)
    response_ids = [tokenizer(r, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for r in RESPONSES[0]]
    [from_text] = judge.judge([CHAT], RESPONSES)
    [from_ids] = judge.judge([CHAT], RESPONSES, token_ids=[(prompt_token_ids(tokenizer, CHAT), response_ids)])
    assert np.allclose(from_text.scores, from_ids.scores, atol=1e-5)
    [last_turn_only] = judge.judge(["Another one?"], RESPONSES)
    assert not np.allclose(from_text.scores, last_turn_only.scores)


def test_a_scoring_function_gets_the_messages():
    from selfplay.judging.function import FunctionJudge

    judge = FunctionJudge("scoring_fixtures:counts_turns", timeout=60)
    try:
        judgments = judge.judge([CHAT, "plain"], [["a", "b"], ["c", "d"]])
    finally:
        judge.shutdown()
    assert [list(j.scores) for j in judgments] == [[4.0, 4.0], [1.0, 1.0]]
