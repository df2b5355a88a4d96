"""`selfplay export RUN --iteration N --out DIR`: one iteration's policy as a plain HF folder.

The folder holds the policy's weights (safetensors), config and tokenizer, copied from the
iteration's committed checkpoint after checking its files still hash to the digest its manifest
records; a train.lora checkpoint is an adapter (selfplay.models.adapter), exported as its base
with the adapter merged, so every export is a plain HF folder that needs neither peft nor the
base. Then a model card (README.md) with its lineage: the run, the recipe
digest, the policy digest, the parent runs a fork descends from, the evaluation judge, and the
win rate against the initial policy of each evaluated iteration up to N. It is written to a
temporary sibling and renamed, so DIR is complete or absent.
"""

import json
import shutil
import uuid
from pathlib import Path

from selfplay import runs
from selfplay.lineage import LineageError, _checked_policy, read_run, trained_stage
from selfplay.models import adapter
from selfplay.stage_names import EVALUATE, METRICS_JSON, POLICY_FOLDER


def _trained_iterations(run_dir: Path, info: dict) -> list[int]:
    first = 0 if info["recipe"].get("seed_training") else 1
    done = []
    for iteration in range(first, info["recipe"]["iterations"] + 1):
        manifest = runs.StageDir(run_dir, *trained_stage(iteration)).manifest()
        if manifest is not None and manifest.get("status") == "done":
            done.append(iteration)
    return done


def _parents(info: dict) -> list[dict]:
    """The chain of runs this one was forked from, nearest first: run_dir, name and fork iteration."""
    chain, parent, seen = [], info.get("parent"), set()
    while parent is not None and parent["run_dir"] not in seen:
        seen.add(parent["run_dir"])
        entry = {"run_dir": parent["run_dir"], "from_iteration": parent["iteration"]}
        try:
            above = read_run(Path(parent["run_dir"]))
        except LineageError:  # moved or deleted: the card names it as run.json recorded it
            chain.append(entry)
            break
        chain.append({**entry, "name": above["name"], "run_id": above["run_id"],
                      "recipe_digest": above["recipe_digest"]})
        parent = above.get("parent")
    return chain


def _win_rates(run_dir: Path, last: int) -> dict[int, float]:
    rates = {}
    for iteration in range(1, last + 1):
        path = runs.StageDir(run_dir, iteration, EVALUATE).path / METRICS_JSON
        if path.exists():
            rates[iteration] = json.loads(path.read_text())["win_rate_vs_initial"]
    return rates


def model_card(info: dict, iteration: int, digest: str, parents: list[dict], win_rates: dict[int, float],
               base: dict | None = None) -> str:
    """The README.md of an export; `base` the {path, digest} of a LoRA checkpoint's base."""
    recipe = info["recipe"]
    judge = recipe["evaluate"].get("judge") or recipe["annotate"]
    lora = recipe["train"].get("lora")
    lines = [f"# {info['name']}, iteration {iteration}", "",
             f"Policy trained by selfplay ({recipe['train']['loss']}, {recipe['pairs']['type']} pairs) from "
             f"`{recipe['policy']['path']}`" + (f", through a LoRA adapter (r={lora['r']}, alpha={lora['alpha']:g}) "
                                                "merged into these weights" if lora else "") + ".", "",
             "## Lineage", "",
             f"- run: `{info['name']}` (run_id `{info['run_id']}`)",
             f"- recipe digest: `{info['recipe_digest']}`",
             f"- policy digest: `{digest}`" + (" (the adapter's checkpoint)" if base else "")]
    if base:
        lines += [f"- base digest: `{base['digest']}` (`{base['path']}`)"]
    if parents:
        lines += ["- parent runs (nearest first):"]
        lines += [f"  - `{p.get('name', p['run_dir'])}` at `{p['run_dir']}`, forked at iteration {p['from_iteration']}"
                  + (f" (recipe digest `{p['recipe_digest']}`)" if "recipe_digest" in p else "") for p in parents]
    else:
        lines += ["- parent runs: none"]
    judge_text = judge.get("function") or judge.get("path") or ""
    lines += ["", "## Evaluation", "", f"Judge: `{judge['type']}`" + (f" (`{judge_text}`)" if judge_text else ""), ""]
    if win_rates:
        lines += ["| iteration | win rate vs initial |", "|---|---|"]
        lines += [f"| {t} | {rate:.4f} |" for t, rate in sorted(win_rates.items())]
    else:
        lines += ["No evaluation up to this iteration."]
    return "\n".join(lines) + "\n"


def _write_policy(source: Path, out: Path) -> None:
    """The checkpoint's files; a train.lora adapter merged into its base (in the base's dtype)."""
    from selfplay.models.causal_lm import POLICY_EXTRAS

    merged = adapter.is_adapter(source)
    if merged:
        from transformers import AutoTokenizer

        from selfplay.models.causal_lm import state_dict_for_save

        model = adapter.merged_causal_lm(source, "auto")
        model.save_pretrained(out, state_dict=state_dict_for_save(model, model.state_dict()), safe_serialization=True)
        AutoTokenizer.from_pretrained(source).save_pretrained(out)
    for path in sorted(source.iterdir()):  # beside an adapter only the extras its base had
        if path.is_file() and (not merged or path.name in POLICY_EXTRAS):
            shutil.copy2(path, out / path.name)


def export_iteration(run_dir: Path, iteration: int, out: Path) -> Path:
    """Write iteration `iteration`'s policy of `run_dir` as an HF folder with a model card at `out`."""
    run_dir, out = Path(run_dir), Path(out)
    info = read_run(run_dir)
    trained = _trained_iterations(run_dir, info)
    if iteration not in trained:
        raise LineageError(f"--iteration {iteration}: {run_dir} has no trained policy for it (trained: "
                           f"{', '.join(map(str, trained)) or 'none yet'})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LineageError(f"--out {out}: exists and is not an empty folder (choose a new one)")
    digest = _checked_policy(run_dir, *trained_stage(iteration))
    source = runs.StageDir(run_dir, *trained_stage(iteration)).path / POLICY_FOLDER
    problem = adapter.base_problem(source)  # an adapter merged into another base is another model
    if problem:
        raise LineageError(f"{source}: {problem}")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _write_policy(source, tmp)
        card = model_card(info, iteration, digest, _parents(info), _win_rates(run_dir, iteration),
                          adapter.base_of(source))
        (tmp / "README.md").write_text(card)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
