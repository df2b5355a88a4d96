"""Runs, forks and their history: run.json, resuming from iteration N, forks, status, lineage.

run.json holds the run id, the frozen resolved recipe, the W&B run id (kept across resumes),
recipe changes accepted with --allow-changes, and for a fork its parent (run dir, run id,
iteration). A fork shares the parent's earlier iterations through symlinks, never copies.
"""

import os
import time
import uuid
from pathlib import Path

from selfplay import runs
from selfplay.recipe import Recipe, recipe_to_yaml


class RecipeChangedError(ValueError):
    pass


class LineageError(ValueError):
    pass


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(old: dict, new: dict) -> list[str]:
    old, new = _flatten(old), _flatten(new)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def read_run(run_dir: Path) -> dict:
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise LineageError(f"{run_dir}: not a selfplay run directory (no run.json)")
    return runs.read_json(path)


def init_run_dir(run_dir: Path, recipe: Recipe, allow_changes: bool = False, parent: dict | None = None) -> dict:
    """Create run.json and recipe.yaml, or check that an existing run has the same recipe."""
    resolved = recipe.model_dump(mode="json")
    info_path = run_dir / "run.json"
    if info_path.exists():
        info = runs.read_json(info_path)
        changes = changed_keys(info["recipe"], resolved)
        if changes and not allow_changes:
            raise RecipeChangedError(f"{run_dir}: recipe differs from the run's frozen recipe in: {', '.join(changes)} "
                                     f"(use --allow-changes to accept, or fork the run)")
        if changes:
            info.setdefault("recipe_changes", []).append({"at": time.time(), "keys": changes, "previous": info["recipe"]})
            info["recipe"], info["recipe_digest"] = resolved, runs.digest_of(resolved)
            runs.write_json_atomic(info_path, info)
            (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
        return info
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    info = {"run_id": run_id, "name": recipe.name, "created": time.time(), "parent": parent,
            "recipe": resolved, "recipe_digest": runs.digest_of(resolved), "wandb_run_id": f"{recipe.name}-{run_id}"}
    (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    runs.write_json_atomic(info_path, info)
    return info


def start_policy(run_dir: Path, iteration: int) -> Path | None:
    """The policy a run trained in iteration-1 (the start of `iteration`), if that exists."""
    if iteration <= 1:
        return None
    path = Path(run_dir) / f"iter-{iteration - 1:03d}" / "train" / "policy"
    if not (path.parent / runs.MANIFEST).exists():
        raise LineageError(f"{run_dir}: iteration {iteration - 1} has no finished train stage to start from")
    return path


def create_fork(parent_dir: Path, fork_dir: Path, from_iteration: int, recipe: Recipe) -> dict:
    """A new run starting at `from_iteration` from the parent's policy at that point.

    Iterations 1..from_iteration-1 are symlinks into the parent (shared, not copied).
    """
    parent = read_run(parent_dir)
    if fork_dir.exists() and any(fork_dir.iterdir()):
        raise LineageError(f"{fork_dir}: already exists; choose another --name")
    if not 1 <= from_iteration <= recipe.iterations:
        raise LineageError(f"--from-iteration must be between 1 and iterations ({recipe.iterations}), got {from_iteration}")
    start_policy(parent_dir, from_iteration)  # fails early if the parent never got there
    if recipe.tracking.group is None:
        recipe.tracking.group = parent["recipe"]["tracking"]["group"] or parent["name"]
    pointer = {"run_dir": str(Path(parent_dir).resolve()), "run_id": parent["run_id"], "iteration": from_iteration}
    info = init_run_dir(fork_dir, recipe, parent=pointer)
    for iteration in range(1, from_iteration):
        os.symlink((Path(parent_dir) / f"iter-{iteration:03d}").resolve(), fork_dir / f"iter-{iteration:03d}")
    forks = parent.setdefault("forks", [])
    forks.append({"run_dir": str(fork_dir.resolve()), "run_id": info["run_id"], "iteration": from_iteration})
    runs.write_json_atomic(Path(parent_dir) / "run.json", parent)
    return info


def supersede_from(run_dir: Path, iteration: int) -> Path | None:
    """Move iterations >= `iteration` aside into superseded/<time>/ (never deleted)."""
    later = sorted(p for p in Path(run_dir).glob("iter-*") if int(p.name[5:8]) >= iteration)
    if not later:
        return None
    target = Path(run_dir) / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    for path in later:
        path.rename(target / path.name)
    return target


STAGE_ORDER = ["seed", "reference-soup", "baseline", "generate", "annotate", "pairs", "train", "eval-gen", "evaluate"]


def stage_status(run_dir: Path, lock_held: bool) -> list[dict]:
    """Every stage folder of a run: done / running / interrupted / failed / pending."""
    info = read_run(run_dir)
    rows = []
    first = info["parent"]["iteration"] if info.get("parent") else 1
    for iteration in range(0, info["recipe"]["iterations"] + 1):
        folder = Path(run_dir) / f"iter-{iteration:03d}"
        names = [n for n in STAGE_ORDER if (folder / n).exists() or (folder / f"{n}.tmp").exists()
                 or (folder / f"{n}.failed.json").exists()]
        if iteration >= 1:
            expected = ["generate", "pairs", "train", "eval-gen", "evaluate"]
            if info["recipe"]["pairs"]["type"] != "drift":
                expected.insert(1, "annotate")
            names = [n for n in STAGE_ORDER if n in names or n in expected]
        for name in names:
            row = {"iteration": iteration, "stage": name, "shared": iteration < first and folder.is_symlink()}
            manifest = runs.StageDir(run_dir, iteration, name).manifest()
            failed = folder / f"{name}.failed.json"
            if manifest and manifest.get("status") == "done":
                row.update(state="done", seconds=manifest["seconds"])
            elif (folder / f"{name}.tmp").exists() and lock_held:
                row["state"] = "running"
            elif failed.exists():
                row.update(state="failed", error=runs.read_json(failed)["error"])
            elif (folder / f"{name}.tmp").exists():
                row["state"] = "interrupted"
            else:
                row["state"] = "pending"
            rows.append(row)
    return rows


def lineage_tree(run_dir: Path) -> list[str]:
    """Lines of the tree of runs and forks around run_dir, from its root, with checkpoints."""
    root = Path(run_dir).resolve()
    while (parent := read_run(root).get("parent")):
        root = Path(parent["run_dir"])
    lines = []

    def visit(path: Path, depth: int, from_iteration: int | None):
        info = read_run(path)
        pad = "  " * depth
        where = f" (fork from iteration {from_iteration})" if from_iteration else ""
        lines.append(f"{pad}{info['name']} [{info['run_id']}] {path}{where}")
        for iteration in range(from_iteration or 1, info["recipe"]["iterations"] + 1):
            manifest = runs.StageDir(path, iteration, "train").manifest()
            if not manifest:
                continue
            reference = manifest.get("reference", {})
            metrics = runs.StageDir(path, iteration, "evaluate").manifest()
            win = f" win_rate_vs_initial={metrics['metrics']['win_rate_vs_initial']:.3f}" if metrics else ""
            lines.append(f"{pad}  iter {iteration}: policy {manifest['outputs']['policy'][:12]} "
                         f"reference={reference.get('rule')}:{str(reference.get('digest'))[:12]}{win}")
        for fork in info.get("forks", []):
            if Path(fork["run_dir"]).exists():
                visit(Path(fork["run_dir"]), depth + 1, fork["iteration"])

    visit(root, 0, None)
    return lines


def lock_is_held(run_dir: Path) -> bool:
    try:
        with runs.RunLock(run_dir):
            return False
    except runs.RunLockedError:
        return True
