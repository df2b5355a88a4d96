"""What an LLM judge is asked and how its answer is read (the `llm_judge` judge; pure text).

UltraFeedback (OpenBMB/UltraFeedback, src/data_annotation) rates a response on four aspects,
one question per aspect, each 1-5 with a rubric per level, in the format "Rating: N /
Rationale: ...". The rubric below is written in our own words; the aspects, the 1-5 scale and
the answer format are the paper's. Three modes:
  - ultrafeedback: one question per (response, aspect);
  - custom: a user's template with {prompt} and {response}, answered in the same format;
  - pairwise: A vs B, answered "Better: A|B / Rationale: ...", asked in both orders.
The judge's chat template renders the question as a user turn; the assistant turn starts with
the answer's prefix ("Rating: " or "Better: "), so the first generated token is the verdict:
constrained decoding (ANSWER_PATTERN) keeps every answer parseable, and the verdict token's
log-probs give the probability-weighted rating.
"""

import math
import re

RATING_PREFIX = "Rating: "
PAIRWISE_PREFIX = "Better: "
RATINGS = ("1", "2", "3", "4", "5")
SIDES = ("A", "B")
RATIONALE_CHARS = 400  # the most the answer pattern lets a rationale run


def answer_pattern(verdicts: tuple[str, ...]) -> str:
    """The regex of what the judge writes after the prefix: a verdict, then one line of rationale."""
    return "[" + "".join(verdicts) + "]" + r"\nRationale: [^\n]{1," + str(RATIONALE_CHARS) + "}"


ASPECTS = {
    "instruction_following": (
        "Instruction following: how well the response does what the instruction asks, in its task, its "
        "constraints and its requested form.",
        ["ignores the instruction or answers something else",
         "touches one part of the instruction and misses the rest",
         "does part of what was asked, or all of it with clear lapses",
         "does what was asked with small lapses",
         "does exactly what was asked, every constraint respected"]),
    "honesty": (
        "Honesty: whether the response is as confident as it has reason to be, says what it does not know, "
        "and does not pretend.",
        ["confidently wrong", "confident with major errors, or unsure in the wrong places",
         "unsure or hedging where it should not be, or small errors stated with confidence",
         "correct, with fitting but imperfect expressions of uncertainty",
         "correct and confident where it should be, open about what it cannot know"]),
    "truthfulness": (
        "Truthfulness: whether the response states only what is true and consistent with the instruction, "
        "without invented facts.",
        ["mostly invented or contradictory", "serious invented or false claims",
         "some false or unsupported claims, the main point intact",
         "small inaccuracies that do not change the main point",
         "nothing false or invented"]),
    "helpfulness": (
        "Helpfulness: how correct, informative and useful the response is for the person who asked.",
        ["wrong or useless", "partly wrong, or so thin it barely helps", "correct and of some use",
         "correct, clear and useful", "correct, thorough and exactly what the asker needed"]),
}


def rating_question(aspect: str, prompt: str, response: str) -> str:
    """The UltraFeedback-style question on one aspect of one response."""
    definition, levels = ASPECTS[aspect]
    rubric = "\n".join(f"{level}: {text}" for level, text in zip(RATINGS, levels))
    return (f"Rate the response to the instruction on one aspect.\n{definition}\n{rubric}\n\n"
            f"Instruction: {prompt}\n\nResponse: {response}\n\n"
            f"Answer with \"Rating: \" and a number from 1 to 5, then a new line with \"Rationale: \" and one "
            f"sentence.")


def custom_question(template: str, prompt: str, response: str) -> str:
    """A user's template with its {prompt} and {response} filled (other braces stay as written)."""
    return template.replace("{prompt}", prompt).replace("{response}", response)


def pairwise_question(prompt: str, first: str, second: str) -> str:
    return (f"Which response follows the instruction better, more helpfully, honestly and truthfully?\n\n"
            f"Instruction: {prompt}\n\nResponse A: {first}\n\nResponse B: {second}\n\n"
            f"Answer with \"Better: A\" or \"Better: B\", then a new line with \"Rationale: \" and one sentence.")


def judge_prompt(tokenizer, question: str, prefix: str) -> str:
    """The judge model's input text: the question as a user turn in its chat template, and the
    start of its answer."""
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix


SENTINEL = "\u2063SELFPLAY-QUESTION\u2063"  # a text no question contains


def chat_wrap(tokenizer) -> tuple[str, str]:
    """(before, after): the chat template's text around a user turn, so that
    before + question + after == judge_prompt(tokenizer, question, "") for every question the
    template inserts verbatim (rendered once per judge, not per question: thousands per stage)."""
    rendered = judge_prompt(tokenizer, SENTINEL, "")
    if rendered.count(SENTINEL) != 1:
        raise ValueError("the judge's chat template does not insert the user's text once, verbatim")
    before, after = rendered.split(SENTINEL)
    return before, after


ANSWER = re.compile(r"^\s*([1-5AB])[ \t]*(?:\nRationale:[ \t]?(.*))?", re.DOTALL)


def parse_answer(text: str, verdicts: tuple[str, ...]) -> tuple[str | None, str]:
    """(the verdict, the rationale) of the text generated after the prefix; verdict None when
    the answer does not start with one of `verdicts` (an unusable answer)."""
    match = ANSWER.match(text)
    if match is None or match.group(1) not in verdicts:
        return None, ""
    return match.group(1), (match.group(2) or "").strip()


def verdict_probabilities(logprobs: dict[str, float]) -> dict[str, float]:
    """The verdict token's distribution over the verdicts, renormalized (the judge may put mass elsewhere)."""
    top = max(logprobs.values())
    weights = {verdict: math.exp(value - top) for verdict, value in logprobs.items()}
    total = sum(weights.values())
    return {verdict: weight / total for verdict, weight in weights.items()}


def expected_rating(logprobs: dict[str, float]) -> float:
    """sum_r r * p(r) over the ratings 1-5, from the rating token's log-probs."""
    return sum(int(verdict) * p for verdict, p in verdict_probabilities(logprobs).items())
