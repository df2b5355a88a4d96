"""The recipe: a pydantic schema with defaults, YAML loading, key=value overrides, clear errors.

A recipe is data. `load_recipe(path, overrides)` returns a validated `Recipe` or raises
`RecipeError` whose message is one line naming the field and what is allowed; the CLI turns
that into exit code 2 before any work starts.
"""

import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from selfplay.judging.registry import JUDGES, FunctionJudgeConfig, JudgeConfig
from selfplay.prompts import PromptError, read_text


class RecipeError(ValueError):
    """A user mistake in a recipe or its overrides (one line, names the field)."""


RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def check_run_name(value: str) -> str:
    """A run or fork name names its folder (runs/<name>): one safe path component."""
    if not isinstance(value, str) or not RUN_NAME.fullmatch(value):
        raise ValueError(f"must be 1-100 characters of letters, digits, '.', '_' or '-', not starting with '.' "
                         f"(it names the run folder), got {value!r}")
    return value


# Seeds feed numpy (non-negative) and vLLM's np.random.seed (below 2**32, one more per replica).
Seed = Annotated[int, Field(ge=0, lt=2**31)]

# Limits of the losses' float options (selfplay.methods): the ranges their math needs.
LOSS_OPTION_LIMITS = {
    "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5) (the assumed chance that a preference label is "
                                                "flipped: 0.5 learns nothing, more learns the reverse)"),
    "nll_weight": (lambda v: v >= 0, ">= 0"),
    "alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "gamma": (lambda v: v >= 0, ">= 0"),
    "lam": (lambda v: v >= 0, ">= 0"),
    "ce_coef": (lambda v: v >= 0, ">= 0"),
}


def _loss_options(loss: str) -> dict[str, type]:
    """A loss's settable options (train.loss_options) and their types: its spec's float and bool
    keywords the trainer does not set."""
    from selfplay.methods import LOSSES

    return LOSSES[loss].option_types


def missing_targets(loss: str, provided: tuple[str, ...]) -> list[str]:
    """The per-pair columns `loss` needs that a pair source declaring `provided` does not emit."""
    from selfplay.methods import LOSSES

    return [name for name in LOSSES[loss].pair_columns if name not in provided]


def missing_responses(loss: str, provided: tuple[str, ...]) -> list[str]:
    """The responses `loss` trains on (beyond chosen and rejected) that a pair source does not carry."""
    from selfplay.methods import LOSSES

    return [name for name in LOSSES[loss].responses if name not in provided]


class Strict(BaseModel):
    # Every float must be finite: an inf learning rate trains a NaN policy that would count as done.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class PolicyConfig(Strict):
    path: str = Field("tiny:llama", description="HF model folder, or tiny:llama (built locally on first use)")
    seed: Seed = Field(0, description="seed for building a tiny: model")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class MagpieConfig(Strict):
    """prompts.magpie: training prompts written by a model from its pre-query template (docs/magpie.md)."""
    model: str | None = Field(None, description="a chat model folder (or tiny:<kind>) that writes the instructions; "
                              "null: the policy entering the iteration")
    candidates: int = Field(128, ge=1, description="instructions sampled per iteration; the first "
                            "prompts.per_iteration that pass the filters are the iteration's prompts")
    max_tokens: int = Field(128, gt=0, description="tokens per sampled instruction")
    min_chars: int = Field(10, ge=1, description="shorter instructions (stripped) are dropped")
    max_chars: int = Field(2000, ge=1, description="longer instructions are dropped")
    repeat_ngram: int = Field(3, ge=1, description="n of the repeated word n-gram filter")
    max_ngram_repeats: int = Field(2, ge=1, description="an instruction in which a word n-gram occurs more often "
                                   "is dropped")
    near_duplicate: float = Field(0.7, gt=0.0, le=1.0, description="Jaccard similarity of character 5-grams at or "
                                  "above which an instruction is a near duplicate of one kept before (this or an "
                                  "earlier iteration) and dropped")

    @model_validator(mode="after")
    def _check_lengths(self):
        if self.min_chars > self.max_chars:
            raise ValueError(f"prompts.magpie.min_chars ({self.min_chars}) must not exceed prompts.magpie.max_chars "
                             f"({self.max_chars})")
        return self


class PromptsConfig(Strict):
    path: str = Field(description="JSONL, Parquet, or a local HF datasets folder; with source magpie only its "
                      "eval_size held-out prompts are read")
    field: str = Field("prompt", description="column holding the user prompt text")
    messages_field: str | None = Field(None, description="column holding conversations instead: lists of "
                                       "{role, content} (system first, user/assistant alternating, a user turn "
                                       "last); prompts.field is then not read")
    system: str | None = Field(None, min_length=1, description="a system prompt for every prompt (docs/"
                               "conversations.md: merged into the first user turn where the template has no "
                               "system role)")
    system_mode: Literal["add", "replace"] = Field("add", description="add: only to prompts without a system "
                                                   "message; replace: in place of theirs too")
    source: Literal["file", "magpie"] = Field("file", description="where training prompts come from: disjoint "
                                              "slices of the file, or written each iteration by a model (Magpie)")
    per_iteration: int = Field(64, gt=0, description="prompts per iteration (disjoint slices; with source magpie "
                               "the most kept)")
    eval_size: int = Field(32, gt=0, description="held-out prompts for evaluation")
    shuffle_seed: Seed = 0
    reuse: bool = Field(False, description="wrap around when the pool runs out instead of failing")
    magpie: MagpieConfig = MagpieConfig()

    @model_validator(mode="after")
    def _check_system(self):
        if self.system is not None and not self.system.strip():
            raise ValueError("prompts.system: an empty system prompt; leave it out instead")
        if self.system_mode == "replace" and self.system is None:
            raise ValueError("prompts.system_mode: replace needs prompts.system (the system prompt to put in place)")
        return self


# vLLM samples greedily below this temperature (SamplingParams' _SAMPLING_EPS), and greedy
# decoding gives one sample per prompt: with n > 1 it fails mid-run ("n must be 1 when using
# greedy sampling").
GREEDY_BELOW = 1e-5


def _check_not_greedy(section: str, temperature: float, samples: int) -> None:
    if temperature < GREEDY_BELOW and samples > 1:
        raise ValueError(f"{section}.temperature: {temperature} is greedy decoding, which gives one sample per "
                         f"prompt, but {section}.samples_per_prompt is {samples}: set a temperature >= "
                         f"{GREEDY_BELOW}" + (f" or {section}.samples_per_prompt=1" if section == "evaluate" else ""))


class GenerateConfig(Strict):
    samples_per_prompt: int = Field(5, ge=2, description="K samples per prompt (K >= 2)")
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(256, gt=0)
    replicas: int = Field(1, ge=1, description="vLLM engine actors (data parallel)")
    tensor_parallel_size: int = Field(1, ge=1)
    num_gpus_per_replica: float = Field(0.0, ge=0.0, description="0 on CPU")
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    kv_cache_gib: float = Field(0.25, gt=0.0, description="CPU KV cache size")
    max_model_len: int = Field(1024, gt=0)
    keep_engine: bool = Field(True, description="keep engines alive across iterations and reload weights in place")
    long_prompts: Literal["truncate", "skip"] = Field(
        "truncate", description="a chat-templated prompt longer than max_model_len - max_tokens: keep its last "
                                "tokens (truncate) or leave the prompt out (skip); counted in the stage manifest")
    store_logprobs: bool = Field(False, description="store sampled-token log-probs in samples.parquet "
                                                    "(costs ~30% of generation on a tiny model; nothing reads them)")
    cpu_threads: int = Field(0, ge=0, description="torch/OpenMP threads per CPU engine; 0: the cores / replicas")
    engine_args: dict[str, object] = Field(default_factory=dict,
                                           description="further vllm.EngineArgs fields, passed through (they win)")

    @model_validator(mode="after")
    def _check_room(self):
        if self.max_tokens >= self.max_model_len:
            raise ValueError(f"generate.max_tokens ({self.max_tokens}) must be smaller than generate.max_model_len "
                             f"({self.max_model_len}): the prompt and the response share the engine's context")
        _check_not_greedy("generate", self.temperature, self.samples_per_prompt)
        if self.engine_args:  # reads vLLM's source, not `import vllm` (15-25 s)
            from selfplay.generate.engine import check_engine_args

            check_engine_args(self.engine_args)
        return self


class PairsConfig(Strict):
    type: str = Field("sppo", description="pair rule name (selfplay.methods.PAIR_RULES)")


class LoraConfig(Strict):
    """train.lora: train a LoRA adapter (peft) instead of every weight."""
    r: int = Field(8, ge=1, description="the adapter's rank")
    alpha: float = Field(16.0, gt=0.0, description="LoRA scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      min_length=1, description="names of the linear layers that get an adapter "
                                      "(the module name's last part, e.g. q_proj, gate_proj)")


class TrainConfig(Strict):
    loss: str = Field("sppo", description="loss name (selfplay.methods.LOSSES)")
    beta: float | None = Field(None, gt=0.0, description="the loss's KL strength (SPPO: 1/eta). Left out: the "
                               "loss's own default from its paper or reference code: sppo 0.001, dpo, ipo, drift "
                               "and selfie 0.1, tpo 0.01, asft 1.0")
    learning_rate: float = Field(5e-7, gt=0.0)
    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(1, ge=1)
    global_batch_size: int = Field(64, ge=1)
    micro_batch_size: int = Field(1, ge=1)
    max_length: int = Field(1024, gt=0)
    max_prompt_length: int = Field(512, gt=0)
    world_size: int = Field(1, ge=1, description="DeepSpeed ranks (Ray actors)")
    zero_stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    max_grad_norm: float = Field(1.0, ge=0.0, description="gradient clipping norm; 0 turns clipping off")
    num_gpus_per_rank: float = Field(0.0, ge=0.0)
    keep_ranks: bool = Field(True, description="keep the DeepSpeed ranks alive from one train stage to the next; under "
                             "ZeRO 0-2 each keeps a copy of the weights it trained in host memory (the policy's size "
                             "per rank) and trains the next stage from it. false starts new ranks every stage. The "
                             "trained weights are the same either way")
    loss_options: dict[str, float | bool] = Field(default_factory=dict, description="extra keyword arguments of "
                                                  "the loss, e.g. label_smoothing, or tpo's length_normalized: true")
    reference: Literal["previous", "initial", "soup"] = "previous"
    soup: list[str] = Field(default_factory=list, description="checkpoints averaged into the reference (SALSA)")
    checkpoint_every: int = Field(0, ge=0, description="DeepSpeed checkpoint every N optimizer steps (0: off)")
    curriculum: Literal["pooled", "sorted", "tiers"] = Field(
        "pooled", description="with pairs.type curriculum (Curry-DPO): pooled trains on every pair in a shuffled "
        "order; sorted once, each epoch easy to hard; tiers trains K-1 stages in turn, stage k on every prompt's "
        "k-th easiest pair with the previous stage's policy as start and (reference previous) reference")
    lora: LoraConfig | None = Field(None, description="train a LoRA adapter (peft) on the policy instead of every "
                                    "weight. The policy is always the initial policy (the base) plus one adapter: "
                                    "each stage continues the entering adapter (a fresh one in the first) and saves "
                                    "only the adapter with the base's digest (megabytes, not the policy's size). "
                                    "The engines serve it with vLLM's LoRA support (one LoRARequest per policy, no "
                                    "weight reload); the trainer, judges and evaluation load the base with the "
                                    "adapter merged; lineage, fork, verify and resume hash it like any policy; "
                                    "`selfplay export` writes the merged model. Reference previous is the previous "
                                    "adapter, initial the base. Needs zero_stage 0-2")
    seed: Seed = 0

    @model_validator(mode="before")
    @classmethod
    def _beta_of_the_loss(cls, data):
        """A recipe without train.beta gets its loss's (LossSpec.default_beta): one number for every
        loss would give DPO SPPO's 0.001. The resolved recipe (run.json) records the number."""
        from selfplay.methods import LOSSES

        if isinstance(data, dict) and data.get("beta") is None:
            spec = LOSSES.get(data.get("loss", cls.model_fields["loss"].default))
            if spec is not None:  # an unknown loss fails below, naming train.loss
                data = {**data, "beta": spec.default_beta}
        return data

    @model_validator(mode="after")
    def _check_batch(self):
        from selfplay.methods import LOSSES

        if self.loss not in LOSSES:
            raise ValueError(f"train.loss must be one of {', '.join(sorted(LOSSES))}, got {self.loss!r}")
        allowed = _loss_options(self.loss)
        for key, value in self.loss_options.items():
            if key not in allowed:
                raise ValueError(f"train.loss_options.{key}: not an option of loss {self.loss!r} "
                                 f"(allowed: {', '.join(allowed) or 'none'})")
            if (allowed[key] is bool) != isinstance(value, bool):
                raise ValueError(f"train.loss_options.{key} must be "
                                 f"{'true or false' if allowed[key] is bool else 'a number'}, got {value!r}")
            within, limits = LOSS_OPTION_LIMITS.get(key, (lambda v: True, ""))
            if not within(value):
                raise ValueError(f"train.loss_options.{key} must be {limits}, got {value!r}")
        if self.lora is not None and self.zero_stage == 3:
            raise ValueError("train.lora needs train.zero_stage 0, 1 or 2 (the adapter is saved from one rank), got 3")
        if self.reference == "soup" and len(self.soup) < 2:
            raise ValueError("train.soup must name at least two checkpoints when train.reference is 'soup'")
        per_step = self.micro_batch_size * self.world_size
        if self.global_batch_size % per_step:
            raise ValueError(f"train.global_batch_size ({self.global_batch_size}) must be a multiple of "
                             f"micro_batch_size * world_size ({per_step})")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("train.max_prompt_length must be smaller than train.max_length")
        return self


class EvaluateConfig(Strict):
    samples_per_prompt: int = Field(2, ge=1, description="samples per eval prompt for each policy")
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, gt=0, description="defaults to generate.max_tokens")
    judge: JudgeConfig | None = Field(None, description="judge for the win rate; defaults to the annotate section")
    every: int = Field(1, ge=1, description="evaluate every N iterations (and always after the last one)")
    kl: bool = Field(True, description="estimate KL(policy || initial) from the eval samples (loads both checkpoints)")

    @model_validator(mode="after")
    def _check_sampling(self):
        _check_not_greedy("evaluate", self.temperature, self.samples_per_prompt)
        return self


class SeedTrainingConfig(Strict):
    """A plain preference-training stage on labelled pairs before iteration 1 (DRIFT, Selfie)."""
    path: str = Field(description="JSONL of {prompt, chosen, rejected}")
    loss: str = Field("dpo", description="a train.loss that needs no per-pair columns and no third response (dpo, ipo, "
                      "sppo_hard, drift, selfie, asft)")
    epochs: int = Field(3, ge=1)
    learning_rate: float | None = Field(None, gt=0.0, description="defaults to train.learning_rate")
    beta: float | None = Field(None, gt=0.0, description="defaults to train.beta")

    @field_validator("loss")
    @classmethod
    def _check_loss(cls, value):
        from selfplay.methods import LOSSES
        from selfplay.train.seed_pairs import RESPONSES, TARGET_COLUMNS

        usable = sorted(name for name in LOSSES
                        if not missing_targets(name, TARGET_COLUMNS) and not missing_responses(name, RESPONSES))
        if value not in usable:
            lacking = [*missing_targets(value, TARGET_COLUMNS), *missing_responses(value, RESPONSES)] \
                if value in LOSSES else []
            needs = (f" ({value!r} needs per-pair {', '.join(lacking)} that labelled pairs do not have)"
                     if lacking else "")
            raise ValueError(f"must be one of {', '.join(usable)}{needs}, got {value!r}")
        return value


# DRIFT's recipe section (selfplay/methods/drift.py): a record is the user's request, the assistant
# turn the user disliked and the user's complaint; each iteration answers it again from a hindsight prompt.
HINDSIGHT_TEMPLATE = ("{prompt}\n\nAn earlier answer to this request was:\n{dsat_response}\n\n"
                      "The user was not satisfied and said:\n{feedback}\n\n"
                      "Write an improved answer to the original request.")
RECORD_FIELDS = ("prompt", "dsat_response", "feedback")


class DriftConfig(Strict):
    hindsight_template: str = Field(HINDSIGHT_TEMPLATE, description="uses {prompt}, {dsat_response}, {feedback}")
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)

    @field_validator("hindsight_template")
    @classmethod
    def _check_template(cls, value):
        """Filled with str.format from each record: an unknown {name} or a stray brace would fail mid-run."""
        import string

        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as error:
            raise ValueError(f"not a format string ({error}); write a literal brace as {{{{ or }}}}") from None
        unknown = sorted(names - set(RECORD_FIELDS))
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; allowed: "
                             f"{', '.join('{' + f + '}' for f in RECORD_FIELDS)}")
        return value


class TrackingConfig(Strict):
    wandb: bool = True
    mode: Literal["online", "offline"] = Field("online", description="W&B mode; WANDB_MODE in the environment wins")
    project: str = "selfplay"
    group: str | None = None
    entity: str | None = None


class Recipe(Strict):
    name: str = "selfplay-run"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value):
        return check_run_name(value)
    seed: Seed = 0
    iterations: int = Field(3, ge=1)
    max_stage_retries: int = Field(2, ge=0, description="retries of a stage whose Ray worker died")
    policy: PolicyConfig = PolicyConfig()
    prompts: PromptsConfig
    generate: GenerateConfig = GenerateConfig()
    annotate: JudgeConfig = Field(default_factory=lambda: FunctionJudgeConfig(function="selfplay.judges:letter_e_count"),
                                  description="the judge (selfplay.judging.registry.JUDGES), keyed on annotate.type")
    pairs: PairsConfig = PairsConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    seed_training: SeedTrainingConfig | None = None
    drift: DriftConfig = DriftConfig()

    @model_validator(mode="after")
    def _check_pairs(self):
        """pairs.type names a pair rule that emits every per-pair column and response train.loss needs,
        from enough samples per prompt."""
        from selfplay.methods import LOSSES, PAIR_RULES

        kind = self.pairs.type
        if kind not in PAIR_RULES:
            raise ValueError(f"pairs.type must be one of {', '.join(sorted(PAIR_RULES))}, got {kind!r}")
        rule = PAIR_RULES[kind]
        missing = missing_targets(self.train.loss, rule.targets)
        if missing:
            usable = sorted(name for name in LOSSES if not missing_targets(name, rule.targets))
            raise ValueError(f"train.loss {self.train.loss!r} needs pair columns {', '.join(missing)} that pairs.type "
                             f"{kind!r} does not provide; with it use train.loss {', '.join(usable)}, "
                             f"or a pairs.type that provides them")
        if self.train.curriculum != "pooled" and "rank" not in rule.targets:
            raise ValueError(f"train.curriculum {self.train.curriculum!r} orders ranked pairs: it needs pairs.type "
                             f"curriculum, got {kind!r}")
        lacking = missing_responses(self.train.loss, rule.responses)
        if lacking:
            providers = sorted(name for name, other in PAIR_RULES.items()
                               if not missing_responses(self.train.loss, other.responses))
            raise ValueError(f"train.loss {self.train.loss!r} trains on a {', '.join(lacking)} response per pair, which "
                             f"pairs.type {kind!r} does not provide; use pairs.type {', '.join(providers)}")
        if self.prompts.source == "magpie" and (rule.front is not None or rule.records is not None):
            raise ValueError(f"prompts.source magpie: pairs.type {kind!r} makes its pairs from the records in "
                             f"prompts.path, not from written prompts; use prompts.source file")
        if rule.front is None and self.generate.samples_per_prompt < rule.min_samples:
            raise ValueError(f"generate.samples_per_prompt must be at least {rule.min_samples} for pairs.type {kind!r}, "
                             f"got {self.generate.samples_per_prompt}")
        return self

    @model_validator(mode="after")
    def _check_settings_together(self):
        from selfplay.methods import PAIR_RULES

        max_model_len = self.generate.max_model_len
        if self.evaluate.max_tokens is not None and self.evaluate.max_tokens >= max_model_len:
            raise ValueError(f"evaluate.max_tokens ({self.evaluate.max_tokens}) must be smaller than "
                             f"generate.max_model_len ({max_model_len}): the prompt and the response share the "
                             f"engine's context")
        if self.evaluate.judge is not None and self.evaluate.judge.shaping is not None:
            raise ValueError("evaluate.judge.shaping: the evaluation compares the judge's raw verdicts; shaping "
                             "(PAR) applies to annotate only, set evaluate.judge.shaping=none")
        if self.annotate.shaping is not None and self.prompts.source == "magpie":
            raise ValueError("annotate.shaping: PAR samples its reference responses once, in iteration 0, for the "
                             "prompt file's training prompts, and prompts.source magpie writes new prompts every "
                             "iteration; use one of the two")
        if self.annotate.shaping is not None and PAIR_RULES[self.pairs.type].front is not None:
            raise ValueError(f"annotate.shaping: pairs.type {self.pairs.type!r} builds its pairs without the annotate "
                             f"stage, so nothing would be shaped; set annotate.shaping=none")
        if self.prompts.magpie.max_tokens >= max_model_len:
            raise ValueError(f"prompts.magpie.max_tokens ({self.prompts.magpie.max_tokens}) must be smaller than "
                             f"generate.max_model_len ({max_model_len}): the pre-query template and the instruction "
                             f"share the engine's context")
        if self.seed_training is not None:
            try:
                self.seed_train_config()
            except ValidationError as error:
                raise ValueError(f"seed_training: {_format_error(error)}") from None
        return self

    def seed_train_config(self) -> TrainConfig:
        """The train settings of the seed stage: train's, with seed_training's loss, epochs, lr and beta,
        validated like train itself (a bad combination fails here, not mid-run)."""
        seed = self.seed_training
        return TrainConfig.model_validate({
            **self.train.model_dump(), "loss": seed.loss, "epochs": seed.epochs, "reference": "initial",
            "loss_options": {}, "learning_rate": seed.learning_rate or self.train.learning_rate,
            "beta": seed.beta or self.train.beta})


class _RecipeLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key written twice in one mapping: YAML keeps the last one
    silently, which in a hand-edited recipe is usually a mistake (`iterations` twice)."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in lines:
                    raise RecipeError(f"duplicate key {key!r} (lines {lines[key]} and {line}); keep one")
                lines[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: str):
    """YAML text as data, for recipes, overrides and a run's recipe.yaml. Raises yaml.YAMLError
    for a syntax error, RecipeError naming `source` for a duplicate key or nesting that PyYAML's
    recursive parser cannot follow (a RecursionError otherwise)."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)
    except RecipeError as error:
        raise RecipeError(f"{source}: {error}") from None
    except RecursionError:
        raise RecipeError(f"{source}: nested too deeply to read") from None


def _parse_value(key: str, text: str):
    """A YAML scalar or list; text that is not valid YAML (e.g. "{prompt} {answer}") is the string itself."""
    try:
        return load_yaml(text, f"override {key}") if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply 'a.b.c=value' overrides (values parsed as YAML scalars/lists)."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like key=value (e.g. train.beta=0.01)")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node.get(part), str):  # a section given by its type's name (`shaping: par`)
                node[part] = {"type": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(key, value)
    return data


def _section_of(annotation):
    """What a field holds: "judge" for a judge union (annotate, evaluate.judge), a section's model, or None."""
    stack, models = [annotation], []
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            models.append(item)
        else:
            stack.extend(get_args(item))
    if any(kind.config in models for kind in JUDGES.values()):
        return "judge"
    return models[0] if len(models) == 1 else None


def _recipe_keys(loc: tuple) -> tuple[list[str], str | None]:
    """An error's location as the recipe's keys, and the judge type when it lies in a judge section.

    Pydantic puts a tagged union's tag into the location (annotate.pairrm.path); the key the user
    wrote is annotate.path.
    """
    section, keys, judge = Recipe, [], None
    for part in loc:
        if section == "judge" and part in JUDGES:
            section, judge = JUDGES[part].config, part
            continue
        keys.append(str(part))
        field = section.model_fields.get(part) if isinstance(section, type) else None
        section = _section_of(field.annotation) if field is not None else None
    return keys, judge


def _format_error(error: ValidationError) -> str:
    first = error.errors()[0]
    keys, judge = _recipe_keys(first["loc"])
    where = ".".join(keys) or "recipe"
    message = first["msg"].removeprefix("Value error, ")
    given = first.get("input")
    if first["type"] == "extra_forbidden" and judge is not None:
        own = JUDGES[judge].config.model_fields
        other = any(keys[-1] in kind.config.model_fields for kind in JUDGES.values())
        message = (f"not a field of the {judge} judge (its fields: {', '.join(own)}"
                   + (f"; set {where}=null to drop it)" if other else ")"))
    elif first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; docs/recipes.md lists every key)"
    elif first["type"] == "missing":
        message = "required field is missing" + (f" (the {judge} judge needs it)" if judge else "")
    elif first["type"] == "union_tag_invalid":  # the judge union: its tag is the section's type
        tag = given.get("type") if isinstance(given, dict) else first["ctx"]["tag"]
        where, message = f"{where}.type", f"must be one of {', '.join(JUDGES)}, got {tag!r}"
    elif first["type"] == "union_tag_not_found":
        message = f"must be a section with a type ({', '.join(JUDGES)}), got {given!r}"
    if judge is not None and ":" in message and message.split(":", 1)[0] in JUDGES[judge].config.model_fields:
        field, rest = message.split(":", 1)  # a judge's cross-field rule names its field: annotate.template: ...
        where, message = f"{where}.{field}", rest.strip()
    return message if where == "recipe" or message.startswith(where) else f"{where}: {message}"


def parse_recipe(data: dict, base_dir: Path | None = None, check_paths: bool = True) -> Recipe:
    """check_paths=False: the schema and its cross-field rules only, for recipes whose files
    live on another machine (`selfplay validate --schema-only`, the paper recipes' test)."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(_format_error(error)) from None
    if not check_paths:
        return recipe
    recipe.prompts.path = _existing_path("prompts.path", recipe.prompts.path, base_dir)
    if recipe.seed_training is not None:
        recipe.seed_training.path = _existing_path("seed_training.path", recipe.seed_training.path, base_dir)
    for field, judge in (("annotate", recipe.annotate), ("evaluate.judge", recipe.evaluate.judge)):
        if getattr(judge, "template", None):  # an LLM judge's custom rubric
            judge.template = _existing_path(f"{field}.template", judge.template, base_dir)
    return recipe


def _existing_path(field: str, value: str, base_dir: Path | None) -> str:
    """Relative paths resolve against the working directory first, then the recipe's folder."""
    path = Path(value)
    if not path.is_absolute() and base_dir is not None and not path.exists() and (base_dir / path).exists():
        path = base_dir / path
    if not path.exists():
        raise RecipeError(f"{field}: file or folder not found: {value}")
    return str(path.resolve())


def load_recipe(path: str | Path, overrides: list[str] = (), check_paths: bool = True) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = load_yaml(read_text(path), str(path)) or {}
    except PromptError as error:  # not UTF-8, or unreadable: named with its line
        raise RecipeError(str(error)) from None
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections")
    return parse_recipe(apply_overrides(data, list(overrides)), base_dir=path.parent, check_paths=check_paths)


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
