"""Model references in recipes: a local HF folder, or `tiny:<kind>` built here on first use.

`tiny:llama` (the quickstart policy), tiny policies of the paper families (`tiny:mistral`,
`tiny:llama3`, `tiny:gemma2`, `tiny:qwen2`, see tiny_families.py) and the judges' tiny models
(`tiny:pairrm`, `tiny:reward`, and `tiny:judge`, an LLM judge trained here to rate by a known
rule: tiny_judge.py), all registered in TINY_BUILDERS.
Built models are cached under $SELFPLAY_CACHE (default ~/.cache/selfplay)/models, keyed by
kind, builder version and seed, written to a temporary folder and renamed into place.
"""

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from selfplay import runs


def _build_llama(out_dir, seed):
    from selfplay.models.tiny_policy import build_tiny_policy
    return build_tiny_policy(out_dir, seed=seed)


def _build_pairrm(out_dir, seed):
    from selfplay.models.tiny_pairrm import build_tiny_pairrm
    return build_tiny_pairrm(out_dir, seed=seed)


def _build_reward(out_dir, seed):
    from selfplay.models.tiny_reward import build_tiny_reward
    return build_tiny_reward(out_dir, seed=seed)


def _build_judge(out_dir, seed):
    from selfplay.models.tiny_judge import build_tiny_judge
    return build_tiny_judge(out_dir, seed=seed)


def _family_builder(family):
    def build(out_dir, seed):
        from selfplay.models.tiny_families import build_tiny_family
        return build_tiny_family(family, out_dir, seed=seed)
    return build


TINY_BUILDERS = {"llama": _build_llama, "pairrm": _build_pairrm, "reward": _build_reward, "judge": _build_judge,
                 **{family: _family_builder(family) for family in ("mistral", "llama3", "gemma2", "qwen2")}}


# Bumped when a builder's output changes, so a cache built by older code is not reused.
BUILD_VERSIONS = {"pairrm": 2,  # 2: backbone tokenizer as DeBERTa-v3 ships it (spm.model, no tokenizer.json)
                  "judge": 2,  # 2: 12000 examples, 1300 steps (1: 6000, 1500)
                  "gemma2": 2}  # 2: Gemma-2's chat template (no system role)


def cache_dir() -> Path:
    return Path(os.environ.get("SELFPLAY_CACHE", Path.home() / ".cache" / "selfplay"))


def is_tiny(spec: str) -> bool:
    return spec.startswith("tiny:")


def resolve_model(spec: str, seed: int = 0) -> Path:
    """Return a local folder for `spec`, building a tiny model into the cache if needed."""
    if not is_tiny(spec):
        return Path(spec).expanduser().resolve()
    kind = spec.split(":", 1)[1]
    if kind not in TINY_BUILDERS:
        raise ValueError(f"unknown tiny model {spec!r}; allowed: {', '.join('tiny:' + k for k in TINY_BUILDERS)}")
    version = f"-v{BUILD_VERSIONS[kind]}" if kind in BUILD_VERSIONS else ""
    target = cache_dir() / "models" / f"tiny-{kind}{version}-seed{seed}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time per model: a second process waits and finds it built (tiny:judge
    # trains for minutes; two test workers asking at once would train it twice on shared cores)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{kind}-", dir=target.parent))
        try:
            TINY_BUILDERS[kind](tmp, seed)
            runs.allow_umask(tmp)  # mkdtemp's folder is 0700, safetensors' files 0600
            try:
                tmp.rename(target)
            except OSError:  # another process built it first
                if not target.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
