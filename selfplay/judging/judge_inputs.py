"""Input checks, model files and dtypes, and token-budget batching shared by the model judges.

Judging runs over whole iterations of samples, so a bad row should fail up front with the
row named, not halfway through. Batches are cut by a token budget (rows x padded length)
rather than a row count: responses vary in length by orders of magnitude, and a fixed row
count either wastes padding on short rows or runs out of memory on long ones.
"""

from pathlib import Path

from selfplay.conversation import conversation_problem

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spm.model")
DTYPES = ("float32", "bfloat16", "float16")  # the torch dtypes a model judge loads its weights in


def torch_dtype(name: str, judge: str):
    """The torch dtype a judge's `dtype` names, else ValueError naming the judge."""
    if name not in DTYPES:
        raise ValueError(f"{judge} dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    import torch  # here: preflight reads this module's file names without loading torch

    return getattr(torch, name)


def check_model_folder(path: str | Path, role: str) -> Path:
    """A local HF model folder with config, weights and tokenizer, else ValueError naming what is missing."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"{role}: {path} is not a folder")
    for wanted, names in (("config", ("config.json",)), ("weights", WEIGHT_FILES),
                          ("tokenizer", TOKENIZER_FILES), ("tokenizer config", ("tokenizer_config.json",))):
        if not any((path / name).is_file() for name in names):
            raise ValueError(f"{role}: {path} is missing its {wanted} file ({' or '.join(names)})")
    return path


def require_chat_template(tokenizer, path: Path, role: str) -> None:
    if not tokenizer.chat_template:
        raise ValueError(f"{role}: the tokenizer in {path} has no chat_template (tokenizer_config.json or "
                         f"chat_template.jinja); the judge formats [user, assistant] turns with it")


def check_inputs(prompts: list, responses: list[list[str]]) -> None:
    """Raise ValueError naming the first bad field: a count mismatch, K < 2, or an empty response.

    Empty responses ("") are rejected rather than scored: no judge can say anything about them,
    and a silent score would quietly steer training toward or away from emptiness.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"judge: {len(prompts)} prompts but {len(responses)} response lists")
    for row, (prompt, candidates) in enumerate(zip(prompts, responses)):
        if not isinstance(prompt, str) and conversation_problem(prompt):
            raise ValueError(f"judge: prompts[{row}] is neither a string nor a conversation "
                             f"({conversation_problem(prompt)})")
        if len(candidates) < 2:
            raise ValueError(f"judge: responses[{row}] has {len(candidates)} responses; judging needs K >= 2")
        for k, response in enumerate(candidates):
            if not isinstance(response, str):
                raise ValueError(f"judge: responses[{row}][{k}] is {type(response).__name__}, not str")
            if response == "":
                raise ValueError(f"judge: responses[{row}][{k}] is an empty string; empty responses are rejected")


def token_budget_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group row indices so that rows x longest row <= batch_tokens (a longer row goes alone).

    Rows are taken longest first, so the largest batch (the one that would run out of memory)
    comes first and similar lengths share a batch (little padding).
    """
    order = sorted(range(len(lengths)), key=lambda row: -lengths[row])
    batches, current = [], []
    for row in order:
        # `current` is sorted longest first, so its first row sets the padded width.
        width = lengths[current[0]] if current else lengths[row]
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        current.append(row)
    if current:
        batches.append(current)
    return batches
