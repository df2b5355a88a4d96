"""A LoRA policy checkpoint: a peft adapter folder that names the base it adapts.

Under train.lora the policy is always the run's base (its initial policy) plus one adapter, and
each train stage saves only the adapter: `adapter_model.safetensors` and `adapter_config.json`
(peft's format, which vLLM's LoRA support reads), the tokenizer, and `selfplay_base.json` with
the base's path and digest. A checkpoint is then megabytes, not the policy's gigabytes, and
the engines switch adapters (a LoRARequest) instead of reloading every weight.

The folder is still the stage's `policy/` output, hashed into its manifest like any folder, so
lineage, fork, verify and resume need nothing new. What reads weights goes through here:
`is_adapter` tells the two kinds apart, `config_folder` is where the architecture's config.json
is, and `merged_causal_lm` is the base with the adapter merged (what `load_causal_lm` returns
for an adapter folder: transformers-side readers see one model either way).
"""

import json
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_JSON = "selfplay_base.json"


class AdapterError(RuntimeError):
    pass


def base_of(folder: str | Path) -> dict | None:
    """{"path", "digest"} of the base an adapter folder adapts; None for a full policy."""
    file = Path(folder) / BASE_JSON
    if not file.is_file():
        return None
    base = json.loads(file.read_text(encoding="utf-8"))
    if not (Path(base["path"]) / "config.json").is_file():  # moved or deleted since the run wrote it
        raise AdapterError(f"{folder}: its base {base['path']} (digest {base['digest']}) is not there; "
                           f"put the base back at that path")
    return base


def base_problem(folder: str | Path, known: dict | None = None) -> str | None:
    """Why the base an adapter folder adapts is not the one it was trained on (moved, or its files
    no longer hash to the digest the adapter records), or None (intact, or a full policy). Every
    file is re-read; `known` caches the answer per base path for a caller checking many adapters."""
    file = Path(folder) / BASE_JSON
    if not file.is_file():
        return None
    base = json.loads(file.read_text(encoding="utf-8"))
    path, recorded = Path(base["path"]), base["digest"]
    if known is not None and (str(path), recorded) in known:
        return known[(str(path), recorded)]
    from selfplay import runs

    if not (path / "config.json").is_file():
        problem = f"its base {path} is not there (moved or deleted); put the base back at that path"
    elif runs.content_digest(runs.fingerprint(path)) != recorded:
        problem = (f"its base {path} no longer hashes to the digest {recorded} the adapter was trained on "
                   f"(edited or replaced); restore that base")
    else:
        problem = None
    if known is not None:
        known[(str(path), recorded)] = problem
    return problem


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / BASE_JSON).is_file()


def config_folder(folder: str | Path) -> Path:
    """Where the policy's config.json is: the base's folder for an adapter, else the folder itself."""
    base = base_of(folder)
    return Path(folder) if base is None else Path(base["path"])


def save_adapter(model, tokenizer, out_dir: str | Path, base: tuple[str, str]) -> None:
    """Write a peft model's adapter (peft's files, as vLLM's LoRA support reads them), the
    tokenizer, and the base's (path, digest): train.lora's checkpoint."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = base[0]  # peft's own record of the base
    # Only the adapter: with lm_head among the targets peft would also write the base's full embedding
    # and head matrices ("save_embedding_layers"), which train.lora never changes.
    model.save_pretrained(out_dir, safe_serialization=True, save_embedding_layers=False)
    # peft writes target_modules from a set, in an order that changes with the process's string
    # hashing: a redone stage would get another digest for the same adapter
    config = json.loads((out_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    tokenizer.save_pretrained(out_dir)
    (out_dir / BASE_JSON).write_text(json.dumps({"path": str(base[0]), "digest": base[1]}, indent=1))


def lora_settings(folder: str | Path) -> tuple:
    """(r, alpha, target_modules) of an adapter folder, as train.lora states them."""
    config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return config["r"], float(config["lora_alpha"]), tuple(sorted(config["target_modules"]))


def lora_mismatch(folder: str | Path, r: int, alpha: float, target_modules) -> str | None:
    """Why train.lora's r, alpha and target_modules do not describe the adapter in `folder`, or
    None: a stage continues its entering adapter, so the two must agree."""
    found = lora_settings(folder)
    if found == (r, float(alpha), tuple(sorted(target_modules))):
        return None
    return (f"train.lora: the entering policy {folder} is an adapter with r {found[0]}, alpha {found[1]:g} on "
            f"{', '.join(found[2])}; a stage continues it, so set train.lora to match")


def adapter_weights(folder: str | Path) -> dict:
    """The adapter's tensors under peft's saved names (`set_peft_model_state_dict` takes them)."""
    from safetensors.torch import load_file

    return load_file(Path(folder) / ADAPTER_WEIGHTS)


def merged_causal_lm(folder: str | Path, dtype):
    """The base with the folder's adapter merged into the weights it adapts: a plain causal LM."""
    from peft import PeftModel

    from selfplay.models.causal_lm import load_causal_lm

    base = load_causal_lm(base_of(folder)["path"], dtype)
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload().eval()


def base_for(policy_path: str | Path, digest: str | None = None) -> tuple[str, str]:
    """(path, digest) of the base a train.lora stage adapts: the entering adapter's base, or the
    entering policy itself when it is a full one (its digest hashed here when the caller has none)."""
    base = base_of(policy_path)
    if base is not None:
        return base["path"], base["digest"]
    if digest is None:
        from selfplay import runs

        digest = runs.content_digest(runs.fingerprint(Path(policy_path)))
    return str(Path(policy_path).resolve()), digest
