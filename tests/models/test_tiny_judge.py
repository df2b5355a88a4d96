"""`tiny:judge` rates held-out responses by its rule (judges.tiny_judge_rating), read as the
LLM judge reads it: the first answer token after "Rating: ", through transformers and vLLM."""

import json
import random
import subprocess
import sys

import pytest
import torch

from selfplay.judges import tiny_judge_rating, tiny_judge_rule
from selfplay.judging import llm_rubric as rubric
from selfplay.models import tiny_judge

from conftest import REPO

HELD_OUT_SEED = 1234  # the build trains on its seed's responses (0 here)
HELD_OUT = 300


def test_rule_buckets_the_e_fraction():
    assert tiny_judge_rating("", "xxxxxxxxxxxxxxxxxxx") == 1                    # 0/19
    assert tiny_judge_rating("", "e" + "x" * 19) == 1                           # 0.05
    assert tiny_judge_rating("", "ee" + "x" * 26) == 2                          # 2/28 = 0.071
    assert tiny_judge_rating("", "ee" + "x" * 23) == 3                          # 0.08: a threshold counts up
    assert tiny_judge_rating("", "e" + "x" * 9) == 4                            # 0.10
    assert tiny_judge_rating("", "Eee" + "x" * 22) == 5                         # 0.12, either case
    assert tiny_judge_rating("ignored: eeee", "") == 1                          # the prompt does not count
    assert tiny_judge_rule("", "e" * 5) == 5.0


def test_training_examples_are_the_judge_inputs_and_answers(tiny_policy):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    responses = tiny_judge.sample_responses(tokenizer, 20, seed=3)
    assert sorted(tiny_judge_rating("", text) for text in responses) == [r for r in range(1, 6) for _ in range(4)]
    heads = tiny_judge.aspect_heads(tokenizer)
    for example in tiny_judge.examples(tokenizer, responses, seed=3):
        ids = heads[example["aspect"]] + example["prompt_ids"]
        text = tokenizer.decode(ids)
        assert text.startswith("<|user|>\nRate the response") and text.endswith("<|assistant|>\n" + rubric.RATING_PREFIX)
        assert tokenizer(text)["input_ids"] == ids                               # as vLLM tokenizes the prompt
        answer = tokenizer.decode(example["answer_ids"])
        assert answer == tiny_judge.answer_text(example["rating"]) + "<|end|>"
        assert tokenizer.decode(example["answer_ids"][:1]) == str(example["rating"])  # the rating is one token
        assert example["running"][-1][1] == tokenizer.convert_tokens_to_ids(str(example["rating"]))


def held_out(folder, tokenizer):
    """(judge input texts, rule ratings, e-fractions) of responses the build never saw."""
    from selfplay.judges import letter_e_fraction

    build = json.loads((folder / "selfplay_tiny.json").read_text())
    trained = set(tiny_judge.sample_responses(tokenizer, build["train_size"], seed=build["seed"]))
    responses = [text for text in tiny_judge.sample_responses(tokenizer, HELD_OUT, seed=HELD_OUT_SEED)
                 if text not in trained]
    assert len(responses) > 0.95 * HELD_OUT
    rng = random.Random(HELD_OUT_SEED)
    prompts, aspects = tiny_judge.quickstart_prompts(), sorted(rubric.ASPECTS)
    texts, rules, fractions = [], [], []
    for response in responses:
        prompt = rng.choice(prompts)
        question = rubric.rating_question(rng.choice(aspects), prompt, response)
        texts.append(rubric.judge_prompt(tokenizer, question, rubric.RATING_PREFIX))
        rules.append(tiny_judge_rating(prompt, response))
        fractions.append(letter_e_fraction(prompt, response))
    return texts, rules, fractions


def agreement(ratings, rules, fractions) -> tuple[float, float]:
    """(the share of ratings equal to the rule's, the same over responses more than 0.01 of
    e-fraction from every threshold): a response at 0.079 and one at 0.081 differ by about one
    letter in a hundred, and the judge's errors are there."""
    from selfplay.judges import TINY_JUDGE_THRESHOLDS

    away = [i for i, fraction in enumerate(fractions) if min(abs(fraction - t) for t in TINY_JUDGE_THRESHOLDS) > 0.01]
    return (sum(g == r for g, r in zip(ratings, rules)) / len(rules),
            sum(ratings[i] == rules[i] for i in away) / len(away))


def spearman(a, b) -> float:
    """Rank correlation (ties broken by position: the e-fractions' ties are few)."""
    ranks = [torch.tensor(values, dtype=torch.float64).argsort().argsort().double() for values in (a, b)]
    return torch.corrcoef(torch.stack(ranks))[0, 1].item()


@pytest.fixture(scope="module")
def judge_folder():
    from selfplay.models import resolve_model

    return resolve_model("tiny:judge")


@pytest.mark.slow
def test_greedy_ratings_follow_the_rule_on_held_out_responses(judge_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(judge_folder)
    model = AutoModelForCausalLM.from_pretrained(judge_folder)
    texts, rules, fractions = held_out(judge_folder, tokenizer)
    probabilities = tiny_judge.rating_probabilities(model, tokenizer, texts)
    greedy = (probabilities.argmax(-1) + 1).tolist()
    exact, away = agreement(greedy, rules, fractions)
    within_one = sum(abs(g - r) <= 1 for g, r in zip(greedy, rules)) / len(rules)
    expected = (probabilities * torch.arange(1, 6)).sum(-1).tolist()
    print(f"held-out {len(rules)}: exact {exact:.3f}, away from the thresholds {away:.3f}, within one "
          f"{within_one:.3f}, spearman(expected, e-fraction) {spearman(expected, fractions):.3f}")
    # measured (seed 0 build; held-out seeds 1234, 12345, 777): exact 0.873, 0.907, 0.850; away from the
    # thresholds 0.989, 1.000, 1.000; spearman 0.982, 0.981, 0.981
    assert exact >= 0.8 and away >= 0.95 and within_one >= 0.98
    assert spearman(expected, fractions) > 0.9


@pytest.mark.slow
def test_vllm_constrained_answers_follow_the_rule(judge_folder, monkeypatch):
    """The judge's call: temperature 0, the answer pattern as structured output, the rating
    token's log-probs over the five digits."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    tokenizer = AutoTokenizer.from_pretrained(judge_folder)
    texts, rules, fractions = held_out(judge_folder, tokenizer)
    digits = tokenizer.convert_tokens_to_ids(list(rubric.RATINGS))
    llm = LLM(model=str(judge_folder), enforce_eager=True, enable_chunked_prefill=False,
              kv_cache_memory_bytes=1 << 28, max_model_len=1024, seed=0)
    params = SamplingParams(temperature=0, max_tokens=32, logprob_token_ids=digits,
                            structured_outputs=StructuredOutputsParams(regex=rubric.answer_pattern(rubric.RATINGS)))
    outputs = llm.generate(texts, params, use_tqdm=False)
    ratings, expected = [], []
    for output in outputs:
        completion = output.outputs[0]
        verdict, _ = rubric.parse_answer(completion.text, rubric.RATINGS)
        assert verdict is not None and completion.text == tiny_judge.answer_text(int(verdict)), completion.text
        ratings.append(int(verdict))
        first = completion.logprobs[0]
        expected.append(rubric.expected_rating({tokenizer.decode([token]): first[token].logprob for token in digits}))
    exact, away = agreement(ratings, rules, fractions)
    print(f"vLLM held-out {len(rules)}: exact {exact:.3f}, away from the thresholds {away:.3f}, "
          f"spearman {spearman(expected, fractions):.3f}")
    # measured: as through transformers
    assert exact >= 0.8 and away >= 0.95
    assert spearman(expected, fractions) > 0.9


def test_the_judge_is_no_policy():
    from selfplay.preflight import PreflightError, check_causal_lm

    with pytest.raises(PreflightError, match="tiny model 'tiny:judge' does not fit here; allowed: tiny:llama"):
        check_causal_lm("policy.path", "tiny:judge", serve=True, chat=True)


@pytest.mark.slow  # the first build of tiny:judge takes 2-3 minutes
def test_make_tiny_judge_prints_its_folder(judge_folder):
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "make-tiny", "judge"], capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(judge_folder)  # a first build logs before it
    assert json.loads((judge_folder / "selfplay_tiny.json").read_text())["kind"] == "judge"
