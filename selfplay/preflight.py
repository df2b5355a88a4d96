"""Pre-flight: everything a run will read, checked before anything is written.

`check_recipe(recipe)` looks at the policy and judge folders (their config files only: no
weights are loaded, and vLLM is not imported, which alone costs 15-25 s), the `tiny:` kinds,
the prompt file and the seed pairs. `selfplay validate` runs it, and `Driver.run` runs it
before the run directory is touched, so a broken path never freezes a run.json that
`selfplay resume` would then repeat. Each problem is a PreflightError: one line naming the
recipe field, the path, and what to do.

A model folder passes when it exists, has config.json, weights and tokenizer files, its
architecture is one transformers knows (and, for the policy, one vLLM's model registry lists:
read from vLLM's source, skipped where vLLM is not installed), and, where a chat is
rendered with its tokenizer (policy, reward model), it has a chat template.
"""

import ast
import functools
import importlib.util
import json
import re
from pathlib import Path

from selfplay.judging.registry import JUDGES
from selfplay.recipe import RecipeError

# `org/name` as the Hugging Face hub spells a model id
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# tiny: kinds that are judges, never a policy (each judge config declares its own; tiny:judge is
# the LLM judge's model, trained to rate, not to write responses)
JUDGE_TINY_KINDS = frozenset(kind for judge in JUDGES.values() for kind in judge.config.tiny_kinds) | {"judge"}
# vLLM registry tables whose architectures generate text
VLLM_GENERATIVE_TABLES = ("_TEXT_GENERATION_MODELS", "_MULTIMODAL_MODELS", "_TRANSFORMERS_SUPPORTED_MODELS")


class PreflightError(RecipeError):
    """Something the recipe points at cannot be used (one line, names the field)."""


def check_recipe(recipe):
    """Check what `recipe` will read; returns its PromptPool (the driver uses it as loaded here)."""
    from selfplay.prompts import load_prompt_pool

    policy = check_causal_lm("policy.path", recipe.policy.path, serve=True, chat=True)
    if policy is not None:  # a tiny: policy is checked by the driver once it is built
        check_context(policy, recipe.generate.max_model_len)
        check_lora_targets(policy, recipe.train.lora)
    for field, judge in (("annotate", recipe.annotate), ("evaluate.judge", recipe.evaluate.judge)):
        if judge is not None:
            check_judge(field, judge)
    if recipe.prompts.source == "magpie" and recipe.prompts.magpie.model is not None:
        check_causal_lm("prompts.magpie.model", recipe.prompts.magpie.model, serve=True, chat=True)
    for index, path in enumerate(recipe.train.soup):
        check_causal_lm(f"train.soup[{index}]", path)
    pool = load_prompt_pool(recipe)
    if recipe.seed_training is not None:
        from selfplay.prompts import read_jsonl_records
        from selfplay.train.seed_pairs import FIELDS

        read_jsonl_records(recipe.seed_training.path, FIELDS, "a seed pair")
    return pool


def check_judge(field: str, judge) -> None:
    """The folders a judge section reads, as its config checks them (JudgeConfigBase.preflight)."""
    judge.preflight(field)


def check_causal_lm(field: str, spec: str, serve: bool = False, chat: bool = False) -> Path | None:
    """A causal LM folder (None for a tiny: kind, built on first use). serve: vLLM must know the
    architecture too; chat: the tokenizer must have a chat template."""
    from selfplay.models import TINY_BUILDERS

    folder = model_folder(field, spec, [kind for kind in TINY_BUILDERS if kind not in JUDGE_TINY_KINDS])
    if folder is None:
        return None
    config = _complete_folder(field, folder)
    architecture = _causal_architecture(field, folder, config)
    known = vllm_architectures() if serve else None
    if known is not None and architecture not in known:
        raise PreflightError(f"{field}: {folder}/config.json names architecture {architecture!r}, which the "
                             f"installed vLLM cannot serve (not in its model registry)")
    if chat and not has_chat_template(folder):
        raise PreflightError(f"{field}: the tokenizer in {folder} has no chat template (chat_template.jinja, or "
                             f"chat_template in tokenizer_config.json); prompts are rendered as a user turn with it")
    return folder


def check_lora_targets(folder: Path, lora) -> None:
    """An adapter on lm_head of a policy whose lm_head is its input embedding (tie_word_embeddings):
    merging it at save would change the embedding too, so the saved policy would not be the one
    trained (a measured 1.0 nat of log-prob on a tiny Qwen2)."""
    if lora is None or "lm_head" not in lora.target_modules:
        return
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)  # the class default where config.json names none
    if getattr(config.get_text_config(), "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False):
        raise PreflightError(f"train.lora.target_modules: lm_head is tied to the input embedding in {folder} "
                             f"(tie_word_embeddings); an adapter on it cannot be merged into the policy it trained: "
                             f"leave lm_head out")


def check_context(folder: Path, max_model_len: int, field: str = "generate.max_model_len",
                  model: str = "policy") -> None:
    """vLLM refuses a max_model_len beyond the model's positions (unless its config scales RoPE)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and not config.get("rope_scaling") and max_model_len > positions:
        raise PreflightError(f"{field} ({max_model_len}) is larger than the {model}'s context "
                             f"(max_position_embeddings {positions} in {folder}/config.json)")


def model_folder(field: str, spec: str, tiny_kinds: list[str]) -> Path | None:
    """The existing local folder `spec` names, or None for a tiny: spec of an allowed kind."""
    from selfplay.models import TINY_BUILDERS, is_tiny

    if is_tiny(spec):
        if spec.split(":", 1)[1] not in tiny_kinds:
            what = "does not fit here" if spec.split(":", 1)[1] in TINY_BUILDERS else "is unknown"
            raise PreflightError(f"{field}: tiny model {spec!r} {what}; allowed: "
                                 f"{', '.join('tiny:' + kind for kind in tiny_kinds)}")
        return None
    path = Path(spec).expanduser()
    if not path.exists():
        if HUB_ID.fullmatch(spec):
            raise PreflightError(_hub_advice(field, spec))
        raise PreflightError(f"{field}: {spec} does not exist (a local model folder, or tiny:<kind>)")
    if not path.is_dir():
        raise PreflightError(f"{field}: {spec} is a file; a model folder (with config.json) is expected")
    return path.resolve()


def _hub_advice(field: str, spec: str) -> str:
    """A hub id: nothing is downloaded at run time, so say where a local copy is, or how to get one."""
    try:
        from huggingface_hub import snapshot_download

        cached = snapshot_download(spec, local_files_only=True)
    except Exception:  # not in the local cache (or no hub library): it must be downloaded
        cached = None
    if cached:
        return (f"{field}: {spec!r} is a Hugging Face hub id and runs never download; it is in the local "
                f"Hugging Face cache: set {field}={cached}")
    local = f"models/{spec.split('/')[-1]}"
    return (f"{field}: {spec!r} is not a local folder; as a Hugging Face hub id it must be downloaded first (runs "
            f"never download): `hf download {spec} --local-dir {local}`, then set {field}={local}")


def _complete_folder(field: str, folder: Path) -> dict:
    """config.json, weights and tokenizer files present; returns the parsed config."""
    from selfplay.judging.judge_inputs import check_model_folder

    if not (folder / "config.json").is_file():
        raise PreflightError(f"{field}: {folder} has no config.json (not a Hugging Face model folder)")
    try:
        check_model_folder(folder, field)
    except ValueError as error:
        raise PreflightError(str(error)) from None
    return read_config(field, folder / "config.json")


def read_config(field: str, file: Path) -> dict:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PreflightError(f"{field}: {file} is not readable JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise PreflightError(f"{field}: {file} must hold a JSON object")
    return config


def _mapping_names(mapping: dict) -> set[str]:
    names = set()
    for value in mapping.values():
        names.update(value if isinstance(value, (tuple, list)) else [value])
    return names


def _known_model_type(field: str, file: Path, config: dict) -> str:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise PreflightError(f"{field}: {file} has model_type {model_type!r}, which transformers "
                             f"{transformers.__version__} does not know")
    return model_type


def _causal_architecture(field: str, folder: Path, config: dict) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    file = folder / "config.json"
    model_type = _known_model_type(field, file, config)
    names = config.get("architectures") or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)]
    known = _mapping_names(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    architecture = next((name for name in names if name in known), None)
    if architecture is None:
        raise PreflightError(f"{field}: {file} names architectures {names}, none of them a causal language model "
                             f"transformers knows")
    return architecture


def check_reward_model_folder(field: str, folder: Path) -> None:
    """A reward model: a sequence classifier transformers knows, with a chat template."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    config = _complete_folder(field, folder)
    file = folder / "config.json"
    _known_model_type(field, file, config)
    names = config.get("architectures") or []
    if names and not set(names) & _mapping_names(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES):
        raise PreflightError(f"{field}: {file} names architectures {names}; a reward model is a sequence "
                             f"classifier (e.g. LlamaForSequenceClassification) with one label")
    if not has_chat_template(folder):
        raise PreflightError(f"{field}: the tokenizer in {folder} has no chat template; the reward model scores "
                             f"[user, assistant] turns rendered with it")


def check_pairrm_folder(field: str, folder: Path) -> None:
    """A PairRM checkpoint: its ranker config, weights and a backbone transformers knows."""
    from selfplay.judging.pairrm import backbone_folder, read_ranker_config, weights_file

    try:
        config = read_ranker_config(folder)
        weights_file(folder)
        backbone = backbone_folder(folder, config["model_name"])
    except ValueError as error:
        raise PreflightError(f"{field}: {error}") from None
    _known_model_type(field, backbone / "config.json", read_config(field, backbone / "config.json"))


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except ValueError:
        return False


@functools.cache
def vllm_architectures() -> frozenset[str] | None:
    """Architectures vLLM's model registry lists as text generators, read from its source
    without importing vLLM; None where vLLM is not installed or its registry has moved."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    registry = Path(list(spec.submodule_search_locations)[0]) / "model_executor" / "models" / "registry.py"
    try:
        tree = ast.parse(registry.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if isinstance(node.value, ast.Dict) and \
                any(isinstance(t, ast.Name) and t.id in VLLM_GENERATIVE_TABLES for t in targets):
            names.update(key.value for key in node.value.keys
                         if isinstance(key, ast.Constant) and isinstance(key.value, str))
    return frozenset(names) or None


def load_tokenizer(field: str, folder: str):
    """The policy's tokenizer, loaded before anything is written: a damaged one is one line too."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # tokenizer files of the user's folder that transformers cannot read
        detail = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise PreflightError(f"{field}: cannot load the tokenizer in {folder} ({type(error).__name__}: "
                             f"{detail[:200]})") from None
