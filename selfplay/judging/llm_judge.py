"""An LLM as the judge (`annotate.type: llm_judge`): a chat model served by vLLM rates responses.

Runs in a Ray actor of its own (RemoteJudge) holding a vLLM engine built like the generation
engines (selfplay/generate/engine.py). What it asks and how the answer is read are in
llm_rubric.py. A stage's questions all go to the engine in one batched `generate` call per
replica (prompts_per_call None: judge_groups splits a stage over the replicas, not in chunks).

Reading a verdict: the answer is constrained to ANSWER_PATTERN after its prefix, so the first
generated token is the verdict; `score: expected` weighs the verdicts by that token's
probabilities (vLLM's `logprob_token_ids`), `score: argmax` takes the sampled one. An answer
still unusable (cut by max_tokens before its verdict, a question longer than the judge's
context) is asked again up to `retries` times at temperature 1 with another seed, then counted
as missing: an aspect rating left out of the mean, a response with no rating at all scored as
its prompt's mean (a tie, never a silent 0), a pairwise order counted as a coin flip.

Scores: ultrafeedback and custom give K scalar scores per prompt (the mean of the aspect
ratings, or `aspect_weights`), which the scale-free scalar path turns into a win matrix;
pairwise gives the K x K logits L[i, j] = logit(P(i beats j)), P averaged over both orders
(position bias cancels), as PairRM's matrix.
"""

import math
import zlib
from dataclasses import dataclass

import numpy as np

from selfplay.conversation import Prompt, as_text
from selfplay.judging import llm_rubric as rubric
from selfplay.judging.base import Judge, Judgment

PAIRWISE_CLIP = 1e-4  # P(i beats j) is clipped to [clip, 1 - clip] before its logit (argmax votes are 0 or 1)


@dataclass
class Question:
    """One judge request: the prompt text, its verdicts, and where its answer goes."""

    text: str
    verdicts: tuple[str, ...]
    group: int        # index of the prompt in the call
    slot: tuple       # (response, aspect) for a rating; (i, j) for a pairwise order


@dataclass
class Answer:
    verdict: str | None = None   # None: unusable after every retry (missing)
    probabilities: dict | None = None
    rationale: str = ""
    attempts: int = 0
    too_long: bool = False  # the question does not fit the judge's context: missing, not retried


def verdict_token_ids(tokenizer, verdicts: tuple[str, ...]) -> dict[str, int]:
    """The token that is exactly each verdict ("3", "A"). The question's ids end with the
    prefix's space (tokenized alone, as the judge sees them), so the verdict's token comes next
    bare, as "4" does in "Rating: 4" under Llama-3's, Qwen2's and SentencePiece tokenizers."""
    ids = {}
    for verdict in verdicts:
        token = tokenizer.convert_tokens_to_ids(verdict)
        if not isinstance(token, int) or token == tokenizer.unk_token_id or tokenizer.decode([token]) != verdict:
            encoded = tokenizer.encode(verdict, add_special_tokens=False)
            token = encoded[0] if len(encoded) == 1 and tokenizer.decode(encoded) == verdict else None
        if token is None:
            raise ValueError(f"the judge's tokenizer has no single token for the verdict {verdict!r}; this model "
                             f"cannot be read as an llm_judge")
        ids[verdict] = token
    return ids


def questions_for(settings: dict, prompts: list[Prompt], responses: list[list[str]],
                  template: str | None) -> list[Question]:
    rubric_mode, listed = settings["rubric"], []
    for group, (prompt, answers) in enumerate(zip(map(as_text, prompts), responses)):
        if rubric_mode == "pairwise":
            for i in range(len(answers)):
                for j in range(len(answers)):
                    if i != j:
                        listed.append(Question(rubric.pairwise_question(prompt, answers[i], answers[j]), rubric.SIDES,
                                               group, (i, j)))
        elif rubric_mode == "custom":
            listed += [Question(rubric.custom_question(template, prompt, response), rubric.RATINGS, group, (k, 0))
                       for k, response in enumerate(answers)]
        else:
            listed += [Question(rubric.rating_question(aspect, prompt, response), rubric.RATINGS, group, (k, a))
                       for k, response in enumerate(answers) for a, aspect in enumerate(settings["aspects"])]
    return listed


def rating_of(answer: Answer, score: str) -> float:
    if answer.verdict is None:
        return math.nan
    if score == "expected":
        return rubric.expected_rating(answer.probabilities)
    return float(answer.verdict)


def scalar_judgment(answers: dict, k: int, aspects: list[str], weights: dict | None, score: str) -> Judgment:
    """K scores: each response's (weighted) mean of its aspect ratings; a response with none
    takes its prompt's mean (all missing: all 0, a tie)."""
    ratings = np.array([[rating_of(answers[(r, a)], score) for a in range(len(aspects))] for r in range(k)])
    weight = np.array([1.0 if weights is None else weights[aspect] for aspect in aspects])
    known = ~np.isnan(ratings)
    totals = (np.where(known, ratings, 0.0) * weight).sum(axis=1)
    mass = (known * weight).sum(axis=1)
    scores = np.divide(totals, mass, out=np.full(k, np.nan), where=mass > 0)
    scores = np.where(np.isnan(scores), np.nanmean(scores) if (mass > 0).any() else 0.0, scores)
    rationales = ["\n".join(f"{aspect}: {answers[(r, a)].verdict or 'missing'} {answers[(r, a)].rationale}".rstrip()
                            for a, aspect in enumerate(aspects)) for r in range(k)]
    return Judgment(scores=scores, ratings=ratings.tolist(), rationales=rationales)


def pairwise_judgment(answers: dict, k: int, score: str) -> Judgment:
    """L[i, j] = logit of P(i beats j), averaged over the order (i, j) and the order (j, i)."""
    def first_wins(answer: Answer) -> float:
        if answer.verdict is None:
            return 0.5
        if score == "expected":
            return rubric.verdict_probabilities(answer.probabilities)["A"]
        return 1.0 if answer.verdict == "A" else 0.0

    logits = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            p = (first_wins(answers[(i, j)]) + 1.0 - first_wins(answers[(j, i)])) / 2
            p = min(max(p, PAIRWISE_CLIP), 1 - PAIRWISE_CLIP)
            logits[i, j] = math.log(p / (1 - p))
            logits[j, i] = -logits[i, j]
    return Judgment(pairwise_logits=logits)


DEFAULT_CONTEXT_CAP = 8192  # max_model_len null: the model's positions, at most this (the KV cache is sized for it)


def model_context(path: str) -> int:
    from transformers import AutoConfig

    positions = getattr(AutoConfig.from_pretrained(path).get_text_config(), "max_position_embeddings", None)
    return min(positions or DEFAULT_CONTEXT_CAP, DEFAULT_CONTEXT_CAP)


class LLMJudge(Judge):
    """A vLLM-served chat model answering llm_rubric's questions. `settings` is the recipe's
    llm_judge section (as a dict); `template` the custom rubric's text."""

    prompts_per_call = None  # a stage's questions in one engine call per replica

    def __init__(self, path: str, settings: dict, template: str | None = None, seed: int = 0, device: str = "cpu"):
        from selfplay.generate.engine import VLLMEngine
        from selfplay.models import adapter
        from selfplay.recipe import GenerateConfig

        self.settings, self.template, self.seed = settings, template, seed
        # `path: policy` under train.lora names an adapter folder: the engine serves it on its base
        lora_rank = adapter.lora_settings(path)[0] if adapter.is_adapter(path) else None
        engine = GenerateConfig(max_tokens=settings["max_tokens"],
                                max_model_len=settings["max_model_len"] or model_context(adapter.config_folder(path)),
                                kv_cache_gib=settings["kv_cache_gib"], tensor_parallel_size=settings["tensor_parallel_size"],
                                num_gpus_per_replica=settings["num_gpus"], replicas=settings["replicas"],
                                gpu_memory_utilization=settings["gpu_memory_utilization"],
                                engine_args=settings["engine_args"])
        self.engine = VLLMEngine(path, engine, dtype=settings["dtype"], seed=seed, device=device, lora_rank=lora_rank)
        self.context = self.engine.llm.llm_engine.model_config.max_model_len
        self.tokenizer = self.engine.llm.get_tokenizer()
        self.wrap = rubric.chat_wrap(self.tokenizer)
        self.verdict_ids = {prefix: verdict_token_ids(self.tokenizer, verdicts)
                            for prefix, verdicts in ((rubric.RATING_PREFIX, rubric.RATINGS),
                                                     (rubric.PAIRWISE_PREFIX, rubric.SIDES))}

    def judge(self, prompts: list[Prompt], responses: list[list[str]]) -> list[Judgment]:
        settings = self.settings
        questions = questions_for(settings, prompts, responses, self.template)
        answers = self.ask(questions)
        per_group = [{} for _ in prompts]
        for question, answer in zip(questions, answers):
            per_group[question.group][question.slot] = answer
        judgments = []
        for group, answered in enumerate(per_group):
            k = len(responses[group])
            if settings["rubric"] == "pairwise":
                judgment = pairwise_judgment(answered, k, settings["score"])
            else:
                aspects = ["rating"] if settings["rubric"] == "custom" else settings["aspects"]
                judgment = scalar_judgment(answered, k, aspects, settings["aspect_weights"], settings["score"])
            judgment.answers = len(answered)
            judgment.missing = sum(a.verdict is None for a in answered.values())
            judgment.too_long = sum(a.too_long for a in answered.values())
            judgment.retried = sum(a.attempts > 1 for a in answered.values())
            judgments.append(judgment)
        return judgments

    def ask(self, questions: list[Question]) -> list[Answer]:
        """Every question in one engine call; the unusable ones again (temperature 1, a new seed)."""
        answers = [Answer() for _ in questions]
        pending = list(range(len(questions)))
        for attempt in range(self.settings["retries"] + 1):
            if not pending:
                break
            self._generate([questions[i] for i in pending], [answers[i] for i in pending], attempt)
            pending = [i for i in pending if answers[i].verdict is None and not answers[i].too_long]
        return answers

    def sampling_params(self, prefix: str, verdicts: tuple[str, ...], temperature: float, seed: int | None):
        """The answer constrained to its pattern, with the verdict tokens' log-probs."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(temperature=temperature, max_tokens=self.settings["max_tokens"], seed=seed,
                              logprob_token_ids=list(self.verdict_ids[prefix].values()),
                              structured_outputs=StructuredOutputsParams(regex=rubric.answer_pattern(verdicts)))

    def _generate(self, questions: list[Question], answers: list[Answer], attempt: int) -> None:
        from vllm.inputs import TokensPrompt

        settings, budget = self.settings, self.context - self.settings["max_tokens"]
        requests, asked, shared = [], [], {}
        before, after = self.wrap
        prefixes = [rubric.PAIRWISE_PREFIX if q.verdicts == rubric.SIDES else rubric.RATING_PREFIX for q in questions]
        token_ids = self.tokenizer([before + q.text + after + prefix for q, prefix in zip(questions, prefixes)],
                                   add_special_tokens=False).input_ids  # one batched call: thousands per stage
        for question, answer, prefix, ids in zip(questions, answers, prefixes, token_ids):
            answer.attempts += 1
            if len(ids) > budget:  # does not fit the judge's context: missing (counted), never cut silently
                answer.too_long = True
                continue
            verdict_ids = self.verdict_ids[prefix]
            temperature = settings["sampling_temperature"] if attempt == 0 else 1.0
            if temperature == 0:  # greedy: no seed, so one SamplingParams serves every question of a kind
                key = (prefix, attempt)
                if key not in shared:
                    shared[key] = self.sampling_params(prefix, question.verdicts, 0.0, None)
                params = shared[key]
            else:  # a seed of its own per question and try: the same answers however the stage is batched
                seed = zlib.crc32(f"{self.seed}/{attempt}/{question.text}".encode()) & 0x7FFFFFFF
                params = self.sampling_params(prefix, question.verdicts, temperature, seed)
            requests.append((TokensPrompt(prompt_token_ids=ids), params))
            asked.append((answer, question, verdict_ids))
        if not requests:
            return
        outputs = self.engine.llm.generate([r[0] for r in requests], sampling_params=[r[1] for r in requests],
                                           use_tqdm=False)
        for (answer, question, verdict_ids), output in zip(asked, outputs):
            completion = output.outputs[0]
            verdict, rationale = rubric.parse_answer(completion.text, question.verdicts)
            if verdict is None or not completion.logprobs:
                continue
            first = completion.logprobs[0]
            answer.verdict, answer.rationale = verdict, rationale
            answer.probabilities = {v: first[token].logprob for v, token in verdict_ids.items() if token in first}
