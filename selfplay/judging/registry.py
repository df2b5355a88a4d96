"""Judges by name: each `annotate.type` maps to its config class and the factory that builds it.

A recipe's `annotate` (and `evaluate.judge`) section is `JudgeConfig`, a pydantic union keyed on
`type`: each judge's config holds its own fields plus the shared ones (`JudgeConfigBase`:
win_matrix, temperature, timeout_seconds; `ModelJudgeConfig` adds batch_tokens, num_gpus and
replicas for judges that run a model in Ray actors). A field of another judge fails validation, except one
left unset (null) or at that judge's default: `annotate.type=pairrm annotate.function=null`
switches a recipe's judge by override, and a recipe frozen by the older flat schema (every
judge's fields, most at their defaults) still parses.

A judge declares what the pipeline must give it, so the pipeline never needs a judge's name:
  - `judges_with_policy`: it scores with the current policy (Selfie), so it is rebuilt when the
    policy changes and the policy's digest is an input of the annotate stage;
  - `runs_in_actor`, `num_gpus`, `replicas`: whether it holds Ray actors (one CPU each), each
    actor's GPUs and how many actors (data parallel: judge_groups spreads the calls over them;
    the function judge runs in a child process of the driver: no actor, num_gpus 0);
  - `tiny_kinds`: the tiny:<kind> models it accepts as its path (never a policy);
  - `identity()`: config entries beyond the fields that make its identity complete (a scoring
    function's source digest), merged into the stage's config digest;
  - `preflight(field)`: checks of the folders it will read, before a run starts.
What a judge reads at call time is declared on its Judge class instead (`takes_token_ids`,
judging/base.py), where judge_groups reads it.

A new judge is a module with its Judge class plus one config class and one factory here.
The judge modules import torch; they are imported by the factories only, so a recipe validates
without them.
"""

import importlib
from collections.abc import Callable
from functools import reduce
from typing import Annotated, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

# The judge of a section that names no type (the recipe default is a scoring function).
DEFAULT_JUDGE = "function"


def load_function(spec: str):
    """Import 'package.module:callable'; errors name the spec and what failed."""
    if ":" not in spec:
        raise ValueError(f"annotate.function must look like 'package.module:callable', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure is the user's module, not ours
        raise ValueError(f"annotate.function {spec!r}: cannot import {module_name!r} ({type(error).__name__}: {error})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"annotate.function {spec!r}: {module_name!r} has no callable {attr!r}")
    return fn


SHAPING_TYPES = ("par", "centered", "lsc")


class ShapingConfig(BaseModel):
    """annotate.shaping: a scalar judge's scores shaped against the reference policy's responses
    (PAR; selfplay/annotate/shaping.py). `shaping: par` is short for `shaping: {type: par}`;
    `shaping: none` (or null) shapes nothing."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    type: Literal["par", "centered", "lsc"] = Field(
        "par", description="par: mean sigmoid(k (r - r_ref)) over the reference responses; centered: r - mean r_ref; "
                           "lsc: log sigmoid(k (r - q85)), q85 the 0.85 quantile of a normal fit to the references")
    k: float = Field(1.0, gt=0.0, description="the sigmoid's slope (par, lsc)")
    references: int = Field(10, ge=1, description="reference responses per training prompt (M), sampled once from "
                                                  "the initial policy (iteration 0) and reused by every iteration")
    temperature: float = Field(0.9, gt=0.0, description="sampling temperature of the reference responses")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="top_p of the reference responses")
    length_penalty: float = Field(0.0, ge=0.0, description="PAR's length penalty: each raw reward minus this x its "
                                                           "tokens beyond length_penalty_after (0: off)")
    length_penalty_after: int = Field(300, ge=0, description="response tokens free of the length penalty")


class JudgeConfigBase(BaseModel):
    """The fields every judge has, and what a judge declares (see the module docstring)."""

    # As selfplay.recipe.Strict (which this module cannot import: the recipe imports it).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    judges_with_policy: ClassVar[bool] = False
    runs_in_actor: ClassVar[bool] = False  # a Ray actor with one CPU and num_gpus GPUs
    gives_scores: ClassVar[bool] = True  # K scalar scores per prompt (not pairwise logits): it can be shaped
    tiny_kinds: ClassVar[tuple[str, ...]] = ()  # the tiny:<kind> models it accepts (never a policy)

    type: str
    win_matrix: Literal["aggregated", "direct"] = "aggregated"
    temperature: Literal["auto"] | float = Field(
        "auto", description="Bradley-Terry temperature for scalar scores: 'auto' (the spread of the stage's "
                            "scores, so their scale and offset do not matter) or a fixed positive number")
    timeout_seconds: float | None = Field(
        600.0, description="the most one judge call (one prompt's samples) or a model judge's start-up may take; "
                           "null waits forever")
    shaping: ShapingConfig | None = Field(
        None, description="shape a scalar judge's scores against reference responses of the initial policy (PAR); "
                          "none or null: the raw scores")

    @model_validator(mode="before")
    @classmethod
    def _drop_unset_fields_of_other_judges(cls, data):
        """A field of another judge given as null or at that judge's default sets nothing: drop it."""
        if not isinstance(data, dict):
            return data
        defaults = _other_judges_defaults(cls)
        return {key: value for key, value in data.items()
                if key in cls.model_fields or key not in defaults or (value is not None and value not in defaults[key])}

    @field_validator("temperature", mode="before")
    @classmethod
    def _check_temperature(cls, value):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"must be 'auto' or a finite number > 0, got {value!r}")
        return float(value)

    @field_validator("timeout_seconds", mode="before")
    @classmethod
    def _check_timeout(cls, value):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value < float("inf")):
            raise ValueError(f"must be a finite number of seconds > 0, or null for no limit; got {value!r}")
        return value

    @field_validator("shaping", mode="before")
    @classmethod
    def _shaping_by_name(cls, value):
        if value is None or value == "none":
            return None
        if isinstance(value, str) and value not in SHAPING_TYPES:
            raise ValueError(f"must be none, {', '.join(SHAPING_TYPES)} or a section with a type; got {value!r}")
        if not cls.gives_scores:
            raise ValueError(f"the {cls.model_fields['type'].default} judge gives pairwise logits, and shaping (PAR) "
                             f"shapes scalar scores: use a scalar judge (function, reward_model, selfie) or shaping none")
        return {"type": value} if isinstance(value, str) else value

    def identity(self) -> dict:
        """Config entries that complete the judge's identity beyond its fields (none by default)."""
        return {}

    def preflight(self, field: str) -> None:
        """Check the folders the judge will read; `field` is the section ('annotate', 'evaluate.judge')."""


class ModelJudgeConfig(JudgeConfigBase):
    """A judge that runs a model in a Ray actor."""

    runs_in_actor: ClassVar[bool] = True

    batch_tokens: int = Field(8192, gt=0, description="token budget of one forward batch")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs of each of the judge's actors (0: CPU)")
    replicas: int = Field(1, ge=1, description="actors running the judge, each with num_gpus GPUs and one CPU; "
                                               "a stage's calls are spread over them (the judgments do not change)")


class FunctionJudgeConfig(JudgeConfigBase):
    """`type: function`: a Python scoring function fn(prompt, response) -> number, in a child process."""

    num_gpus: ClassVar[float] = 0.0  # runs beside the driver, holds no GPU

    type: Literal["function"] = "function"
    function: str = Field(description="'package.module:callable' scoring (prompt, response) -> number")

    @field_validator("function")
    @classmethod
    def _importable(cls, value, info):
        if (info.context or {}).get("skip_imports"):  # reading a run's record (status), not running it
            return value
        try:
            load_function(value)
        except ValueError as error:  # the recipe error names the section (annotate or evaluate.judge)
            raise ValueError(str(error).removeprefix("annotate.function ")) from None
        return value

    def identity(self) -> dict:
        """The digest of the function's module source: a changed scoring function re-annotates."""
        from selfplay.runs import file_digest_of_module

        return {"function_source_sha256": file_digest_of_module(self.function.split(":", 1)[0])}


class PairRMJudgeConfig(ModelJudgeConfig):
    """`type: pairrm`: a pairwise ranker, a logit for every ordered pair of responses."""

    tiny_kinds: ClassVar[tuple[str, ...]] = ("pairrm",)
    gives_scores: ClassVar[bool] = False

    type: Literal["pairrm"] = "pairrm"
    path: str = Field(description="PairRM checkpoint folder, or tiny:pairrm")
    backend: Literal["native", "llm-blender"] = "native"

    def preflight(self, field: str) -> None:
        from selfplay.preflight import check_pairrm_folder, model_folder

        folder = model_folder(f"{field}.path", self.path, list(self.tiny_kinds))
        if folder is not None:
            check_pairrm_folder(f"{field}.path", folder)


class RewardModelJudgeConfig(ModelJudgeConfig):
    """`type: reward_model`: a sequence classifier, one scalar score per response."""

    tiny_kinds: ClassVar[tuple[str, ...]] = ("reward",)

    type: Literal["reward_model"] = "reward_model"
    path: str = Field(description="reward model folder (a sequence classifier with one label), or tiny:reward")

    def preflight(self, field: str) -> None:
        from selfplay.preflight import check_reward_model_folder, model_folder

        folder = model_folder(f"{field}.path", self.path, list(self.tiny_kinds))
        if folder is not None:
            check_reward_model_folder(f"{field}.path", folder)


class SelfieJudgeConfig(ModelJudgeConfig):
    """`type: selfie`: the current policy scores its own samples against a fixed reference (SPA)."""

    judges_with_policy: ClassVar[bool] = True

    type: Literal["selfie"] = "selfie"
    reference: str | None = Field(None, description="fixed reference model; null: the initial policy")

    def preflight(self, field: str) -> None:
        if self.reference:  # unset: the initial policy, checked as policy.path
            from selfplay.preflight import check_causal_lm

            check_causal_lm(f"{field}.reference", self.reference)


TINY_CHAT_KINDS = ("llama", "mistral", "llama3", "gemma2", "qwen2")  # the tiny policies (selfplay make-tiny)


class LLMJudgeConfig(JudgeConfigBase):
    """`type: llm_judge`: a chat model served by vLLM answers rubric questions (UltraFeedback's
    aspects, a custom template, or A-vs-B), read with constrained decoding (llm_judge.py)."""

    runs_in_actor: ClassVar[bool] = True
    tiny_kinds: ClassVar[tuple[str, ...]] = ("judge",)

    type: Literal["llm_judge"] = "llm_judge"
    path: str = Field(description="the judge model: a chat model folder vLLM can serve, tiny:judge, or policy (the "
                                  "current policy judges its own samples, as self-rewarding models do)")
    rubric: Literal["ultrafeedback", "custom", "pairwise"] = Field(
        "ultrafeedback", description="ultrafeedback: each aspect rated 1-5 with a rationale; custom: the template "
                                     "file, rated 1-5; pairwise: A vs B in both orders, a K x K win matrix")
    aspects: list[Literal["instruction_following", "honesty", "truthfulness", "helpfulness"]] = Field(
        default_factory=lambda: ["instruction_following", "honesty", "truthfulness", "helpfulness"], min_length=1,
        description="the UltraFeedback aspects asked (one question each per response)")
    aspect_weights: dict[str, float] | None = Field(
        None, description="weight of each aspect in a response's score; null: the plain mean")
    template: str | None = Field(None, description="rubric: custom: a text file with {prompt} and {response}, "
                                                   "asking for \"Rating: N\" (1-5) and \"Rationale: ...\"")
    score: Literal["expected", "argmax"] = Field(
        "expected", description="expected: the rating weighted by the rating token's probabilities; argmax: the "
                                "sampled rating")
    sampling_temperature: float = Field(0.0, ge=0.0, description="the judge's sampling temperature (UltraFeedback: "
                                                                 "0); retries sample at 1")
    max_tokens: int = Field(64, ge=1, description="tokens of one answer (verdict and rationale)")
    retries: int = Field(2, ge=0, description="new tries, with other seeds, of an answer that is unusable")
    max_missing_fraction: float = Field(0.05, ge=0.0, le=1.0, description="the most answers of a stage that may "
                                        "stay unusable after the retries; beyond it the stage fails")
    max_model_len: int | None = Field(None, gt=0, description="the judge engine's context (question and answer); "
                                                             "null: the model's own")
    kv_cache_gib: float = Field(0.25, gt=0.0, description="CPU KV cache of the judge engine")
    dtype: str = Field("auto", description="the judge model's dtype in vLLM (auto: its config's)")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs of each judge actor (0: CPU)")
    replicas: int = Field(1, ge=1, description="judge engine actors; a stage's questions are split over them")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    engine_args: dict[str, object] = Field(default_factory=dict, description="further vllm.EngineArgs fields")

    @property
    def judges_with_policy(self) -> bool:  # `path: policy`: rebuilt when the policy changes
        return self.path == "policy"

    @model_validator(mode="after")
    def _check_rubric(self):
        if self.rubric == "custom" and not self.template:
            raise ValueError("template: rubric custom needs a template file with {prompt} and {response}")
        if self.rubric != "custom" and self.template:
            raise ValueError(f"template: only rubric custom reads a template (rubric is {self.rubric!r})")
        if self.aspect_weights is not None:
            unknown = sorted(set(self.aspect_weights) - set(self.aspects))
            if unknown or set(self.aspects) - set(self.aspect_weights):
                raise ValueError(f"aspect_weights: give a weight for each of aspects ({', '.join(self.aspects)})"
                                 + (f"; not asked: {', '.join(unknown)}" if unknown else ""))
            if any(w < 0 for w in self.aspect_weights.values()) or not any(self.aspect_weights.values()):
                raise ValueError("aspect_weights: weights must be >= 0 and not all 0")
        if self.shaping is not None and self.rubric == "pairwise":
            raise ValueError("shaping: rubric pairwise gives pairwise logits, and shaping (PAR) shapes scalar scores; "
                             "use rubric ultrafeedback or custom, or shaping none")
        if self.max_model_len is not None and self.max_tokens >= self.max_model_len:
            raise ValueError(f"max_model_len: {self.max_model_len} leaves no room for a question before max_tokens "
                             f"({self.max_tokens}) of answer; raise it or lower max_tokens")
        return self

    def template_text(self) -> str | None:
        if self.template is None:
            return None
        from pathlib import Path

        try:
            text = Path(self.template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"template: cannot read {self.template} ({type(error).__name__})") from None
        missing = [key for key in ("{prompt}", "{response}") if key not in text]
        if missing:
            raise ValueError(f"template: {self.template} has no {' or '.join(missing)} placeholder")
        return text

    def identity(self) -> dict:
        """The custom template's text digest: an edited template re-judges."""
        from selfplay import runs

        return {} if self.template is None else {"template_sha256": runs.digest_of(self.template_text())}

    def preflight(self, field: str) -> None:
        try:
            self.template_text()
        except ValueError as error:
            from selfplay.preflight import PreflightError

            raise PreflightError(f"{field}.{error}") from None
        from selfplay.models import is_tiny
        from selfplay.preflight import check_causal_lm, check_context, model_folder

        if is_tiny(self.path):  # tiny:judge, or a tiny policy (a judge with no preference, for plumbing)
            model_folder(f"{field}.path", self.path, ["judge", *TINY_CHAT_KINDS])
        elif self.path != "policy":
            folder = check_causal_lm(f"{field}.path", self.path, serve=True, chat=True)
            if self.max_model_len is not None:
                check_context(folder, self.max_model_len, f"{field}.max_model_len", f"{field}.path")


# -- factories: (config, policy_path, seed, default_reference) -> a judge ---------------------
def _function_judge(config: FunctionJudgeConfig, policy_path, seed, default_reference):
    from selfplay.judging.function import FunctionJudge

    return FunctionJudge(config.function, timeout=config.timeout_seconds)


def _in_actor(cls, args: dict, config: ModelJudgeConfig):
    from selfplay.judging.calls import RemoteJudge

    args["device"] = "cuda" if config.num_gpus > 0 else "cpu"  # Ray pins the actor's GPU as cuda:0
    return RemoteJudge(cls, args, num_gpus=config.num_gpus, timeout=config.timeout_seconds, replicas=config.replicas)


def _pairrm_judge(config: PairRMJudgeConfig, policy_path, seed, default_reference):
    from selfplay.judging.pairrm import PairRMJudge
    from selfplay.models import resolve_model

    return _in_actor(PairRMJudge, dict(path=str(resolve_model(config.path, seed)), backend=config.backend,
                                       batch_tokens=config.batch_tokens), config)


def _reward_model_judge(config: RewardModelJudgeConfig, policy_path, seed, default_reference):
    from selfplay.judging.reward_model import RewardModelJudge
    from selfplay.models import resolve_model

    return _in_actor(RewardModelJudge, dict(path=str(resolve_model(config.path, seed)),
                                            batch_tokens=config.batch_tokens), config)


def _selfie_judge(config: SelfieJudgeConfig, policy_path, seed, default_reference):
    from selfplay.judging.selfie import SelfieJudge
    from selfplay.models import resolve_model

    # SPA judges against a FIXED reference (the SFT model): the recipe's, else the initial policy
    reference = config.reference or default_reference or policy_path
    return _in_actor(SelfieJudge, dict(policy_path=str(policy_path), reference_path=str(resolve_model(reference, seed)),
                                       batch_tokens=config.batch_tokens), config)


def _llm_judge(config: LLMJudgeConfig, policy_path, seed, default_reference):
    from selfplay.judging.llm_judge import LLMJudge
    from selfplay.models import resolve_model

    path = policy_path if config.path == "policy" else resolve_model(config.path, seed)
    return _in_actor(LLMJudge, dict(path=str(path), settings=config.model_dump(mode="json"),
                                    template=config.template_text(), seed=seed), config)


class JudgeKind(NamedTuple):
    config: type[JudgeConfigBase]
    factory: Callable


JUDGES: dict[str, JudgeKind] = {
    "function": JudgeKind(FunctionJudgeConfig, _function_judge),
    "pairrm": JudgeKind(PairRMJudgeConfig, _pairrm_judge),
    "reward_model": JudgeKind(RewardModelJudgeConfig, _reward_model_judge),
    "selfie": JudgeKind(SelfieJudgeConfig, _selfie_judge),
    "llm_judge": JudgeKind(LLMJudgeConfig, _llm_judge),
}


def _other_judges_defaults(own: type[JudgeConfigBase]) -> dict[str, list]:
    """{field of another judge that `own` lacks: the defaults it has there (None where required)}."""
    defaults: dict[str, list] = {}
    for kind in JUDGES.values():
        for name, info in kind.config.model_fields.items():
            if name not in own.model_fields:
                defaults.setdefault(name, []).append(None if info.is_required() else info.default)
    return defaults


def _judge_type(value):
    """The union's tag: a section's `type` (the default judge where it names none)."""
    if isinstance(value, dict):
        return value.get("type", DEFAULT_JUDGE)
    return getattr(value, "type", None)


JudgeConfig = Annotated[reduce(lambda union, member: union | member,
                               [Annotated[kind.config, Tag(name)] for name, kind in JUDGES.items()]),
                        Discriminator(_judge_type)]


def make_judge(config: JudgeConfigBase, policy_path: str, seed: int = 0, default_reference: str | None = None):
    """A judge for a recipe's annotate (or evaluate.judge) section; model judges become Ray actors.

    policy_path: the current policy (for a judge that `judges_with_policy`); default_reference:
    what a judge that needs a fixed reference uses when its config names none (the initial policy).
    """
    if config.type not in JUDGES:
        raise ValueError(f"annotate.type {config.type!r} is not supported (known: {', '.join(JUDGES)})")
    return JUDGES[config.type].factory(config, policy_path, seed, default_reference)
