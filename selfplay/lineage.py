"""Runs, forks and their history: run.json, the frozen recipe, resuming from iteration N,
forks, status, lineage.

run.json holds the run id, the frozen resolved recipe and its digest, the W&B run id (kept
across resumes), recipe changes accepted with --allow-changes, and for a fork its parent (run
dir, run id, iteration, the digest of the policy it starts from, the iterations it shares).

Two promises:
- What a run stands on never changes under it. A fork's shared iterations are its own folders
  whose files are hard links to the parent's (a plain copy where links fail), so a parent redo,
  which moves its folders to superseded/, cannot touch the fork. The fork's start policy is
  checked against the recorded digest before every start.
- The frozen recipe is the one whose digest run.json records. A hand edit of run.json or
  recipe.yaml is refused with the path and the remedy; `--allow-changes` accepts it and records
  the change (keys, previous recipe and digest) like any other.
"""

import copy
import fcntl
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import yaml

from selfplay import runs
from selfplay.recipe import Recipe, RecipeError, load_yaml, recipe_to_yaml
from selfplay.stage_names import EVALUATE, POLICY_FOLDER, SEED, TRAIN

log = logging.getLogger("selfplay")

RUN_KEYS = {"run_id": str, "name": str, "recipe": dict, "recipe_digest": str}
ITERATION_FOLDER = re.compile(r"^iter-(\d{3})$")


class RecipeChangedError(ValueError):
    pass


class LineageError(ValueError):
    pass


def flatten(data: dict, prefix: str = "") -> dict:
    """{"train": {"beta": 0.1}} -> {"train.beta": 0.1}: recipe keys as the CLI writes them."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(old: dict, new: dict) -> list[str]:
    old, new = flatten(old), flatten(new)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


# -- run.json and the frozen recipe ----------------------------------------------------------
def read_run(run_dir: Path) -> dict:
    """run.json, checked: a missing, truncated, non-object or incomplete file is one line."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise LineageError(f"{run_dir}: not a selfplay run directory (no run.json)")
    remedy = "restore it from a backup (the frozen recipe is also in recipe.yaml)"
    try:
        info = runs.read_json(path)
    except OSError as error:
        raise LineageError(f"{path}: cannot be read ({error.strerror or error})") from None
    except ValueError:
        raise LineageError(f"{path}: damaged (empty, truncated or not JSON): {remedy}") from None
    if not isinstance(info, dict):
        raise LineageError(f"{path}: damaged (not a JSON object): {remedy}")
    for key, kind in RUN_KEYS.items():
        if not isinstance(info.get(key), kind):
            raise LineageError(f"{path}: damaged ({key!r} is missing or not a {kind.__name__}): {remedy}")
    if not isinstance(info["recipe"].get("iterations"), int):
        raise LineageError(f"{path}: damaged (recipe.iterations is missing): {remedy}")
    parent = info.get("parent")
    if parent is not None and not (isinstance(parent, dict) and isinstance(parent.get("run_dir"), str)
                                   and isinstance(parent.get("iteration"), int)):
        raise LineageError(f"{path}: damaged ('parent' needs run_dir and iteration): {remedy}")
    forks = info.get("forks", [])
    if not (isinstance(forks, list) and all(isinstance(f, dict) and isinstance(f.get("run_dir"), str)
                                            and isinstance(f.get("iteration"), int) for f in forks)):
        raise LineageError(f"{path}: damaged ('forks' needs run_dir and iteration for each fork): {remedy}")
    return info


def _read_recipe_yaml(path: Path):
    """recipe.yaml as data, or a string saying why it is not a recipe."""
    try:
        data = load_yaml(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "not readable YAML"
    except RecipeError as error:  # a duplicate key, or nesting too deep
        return str(error)
    return data if isinstance(data, dict) else "not a mapping"


def recipe_files(run_dir: Path) -> dict:
    """The run's frozen recipe and any hand edits of run.json or recipe.yaml.

    The frozen recipe is whichever copy still hashes to run.json's recipe_digest. Returns
    {"info", "frozen", "requested" (the edited recipe if a file was edited, else the frozen
    one), "edits" ([(path, changed keys)])}.
    """
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    recorded = info["recipe_digest"]
    yaml_path = run_dir / "recipe.yaml"
    copies = [(run_dir / "run.json", info["recipe"])]
    if yaml_path.exists():
        copies.append((yaml_path, _read_recipe_yaml(yaml_path)))
    else:
        log.warning("%s is missing; it is written again from run.json", yaml_path)
    frozen = next((data for _, data in copies if isinstance(data, dict) and runs.digest_of(data) == recorded), None)
    if frozen is None:
        raise LineageError(f"{run_dir}/run.json: neither its recipe nor recipe.yaml matches the recorded "
                           f"recipe_digest (both edited by hand?): restore them from a backup")
    # at most one copy differs from the frozen one (else neither would match the digest)
    edits = [(path, changed_keys(frozen, data) if isinstance(data, dict) else [f"({data})"])
             for path, data in copies if data is not frozen and (not isinstance(data, dict)
                                                                  or runs.digest_of(data) != recorded)]
    edited = [data for path, data in copies if edits and path == edits[0][0] and isinstance(data, dict)]
    return {"info": info, "frozen": frozen, "requested": copy.deepcopy(edited[0] if edited else frozen),
            "edits": edits}


def _describe_edits(edits: list) -> str:
    return "; ".join(f"{path} was edited by hand ({', '.join(keys) or 'formatting only'})" for path, keys in edits)


def recipe_change(run_dir: Path, recipe: Recipe, allow_changes: bool) -> dict | None:
    """What `recipe` changes in an existing run's frozen recipe, as the record --allow-changes
    keeps (None: nothing changed and no file was edited). Refused without allow_changes."""
    state = recipe_files(run_dir)
    resolved = recipe.model_dump(mode="json")
    keys = changed_keys(state["frozen"], resolved)
    if state["edits"] and not allow_changes:
        raise RecipeChangedError(f"{_describe_edits(state['edits'])}: it no longer matches the frozen recipe "
                                 f"(recipe_digest in run.json); accept the edit with --allow-changes (recorded in "
                                 f"run.json), or restore the file")
    if keys and not allow_changes:
        raise RecipeChangedError(f"{run_dir}: recipe differs from the run's frozen recipe in: {', '.join(keys)} "
                                 f"(use --allow-changes to accept, or fork the run)")
    if not keys and not state["edits"]:
        return None
    return {"at": time.time(), "keys": keys, "previous": state["frozen"],
            "previous_digest": state["info"]["recipe_digest"], "digest": runs.digest_of(resolved),
            "hand_edited": {str(path): edited for path, edited in state["edits"]}}


def _write_recipe_files(run_dir: Path, info: dict, recipe: Recipe) -> None:
    tmp = run_dir / "recipe.yaml.tmp"
    tmp.write_text(recipe_to_yaml(recipe))
    os.replace(tmp, run_dir / "recipe.yaml")
    runs.write_json_atomic(run_dir / "run.json", info)


def _new_run_info(recipe: Recipe, parent: dict | None) -> dict:
    resolved = recipe.model_dump(mode="json")
    run_id = uuid.uuid4().hex[:12]
    return {"run_id": run_id, "name": recipe.name, "created": time.time(), "parent": parent,
            "recipe": resolved, "recipe_digest": runs.digest_of(resolved), "wandb_run_id": f"{recipe.name}-{run_id}"}


# What a start that stopped before run.json leaves in a run directory (the lock, the driver's
# log): such a folder is still a run to be, not somebody else's files.
START_UP_LEFTOVERS = {".lock", "logs"}


def check_run_dir(run_dir: Path) -> None:
    """Refuse, before anything is written, a run directory that would mix a run with other files:
    a non-empty folder that is not a run, or a folder inside another run (whose `verify` and
    stage listing would then read the inner run's folders as its own)."""
    run_dir = Path(run_dir).resolve()
    outer = next((folder for folder in run_dir.parents if (folder / "run.json").is_file()), None)
    if outer is not None:
        raise LineageError(f"{run_dir}: inside the run directory {outer}; choose a run directory outside any run")
    if run_dir.is_dir() and not (run_dir / "run.json").exists() and \
            {entry.name for entry in run_dir.iterdir()} - START_UP_LEFTOVERS:
        raise LineageError(f"{run_dir}: not a selfplay run (no run.json) and not empty; choose a new or empty folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise LineageError(f"{run_dir}: not a folder; choose a new or empty folder")


def init_run_dir(run_dir: Path, recipe: Recipe, allow_changes: bool = False, parent: dict | None = None) -> dict:
    """Create run.json and recipe.yaml, or check that an existing run has the same recipe (and
    that neither file was edited by hand); an accepted change is recorded in run.json."""
    run_dir = Path(run_dir)
    if (run_dir / "run.json").exists():
        with runs.run_json_lock(run_dir):  # a fork of this run may be recording itself right now
            change = recipe_change(run_dir, recipe, allow_changes)
            info = read_run(run_dir)
            if change is None:
                if not (run_dir / "recipe.yaml").exists():
                    _write_recipe_files(run_dir, info, recipe)
                return info
            info.setdefault("recipe_changes", []).append(change)
            info["recipe"], info["recipe_digest"] = recipe.model_dump(mode="json"), change["digest"]
            _write_recipe_files(run_dir, info, recipe)
        log.info("recipe change accepted and recorded in %s: %s", run_dir / "run.json",
                 ", ".join(change["keys"] + [f"hand edit of {p}" for p in change["hand_edited"]]))
        return info
    run_dir.mkdir(parents=True, exist_ok=True)
    info = _new_run_info(recipe, parent)
    _write_recipe_files(run_dir, info, recipe)
    return info


# -- which policy an iteration trains and starts from ----------------------------------------
def trained_stage(iteration: int) -> tuple[int, str]:
    """(iteration, stage) whose committed policy is the one `iteration` trained: the seed stage
    at 0, else the iteration's train stage."""
    return iteration, SEED if iteration == 0 else TRAIN


def entering_stage(iteration: int, seed_training: bool) -> tuple[int, str] | None:
    """(iteration, stage) whose committed policy `iteration` starts from: what the previous
    iteration trained; at iteration 1 that is the seed stage's policy when the recipe trains
    one, else the initial policy (None). The one rule RunContext.policy("entering") and forks
    follow; a fork's first iteration starts from its own copy of that stage (fork_start_policy)."""
    if iteration == 1 and not seed_training:
        return None
    return trained_stage(iteration - 1)


# -- forks -----------------------------------------------------------------------------------
def _iteration_dir(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / f"iter-{iteration:03d}"


def _checked_policy(run_dir: Path, iteration: int, stage_name: str) -> str:
    """The digest of the stage's policy, after checking the files still hash to it."""
    stage = runs.StageDir(run_dir, iteration, stage_name)
    manifest = stage.manifest()
    path = stage.path / POLICY_FOLDER
    if manifest is None or POLICY_FOLDER not in manifest["outputs"] or not path.exists():
        raise LineageError(f"{path}: missing, or its manifest is damaged")
    digest = manifest["outputs"][POLICY_FOLDER]
    if runs.content_digest(runs.fingerprint(path, manifest["output_files"].get(POLICY_FOLDER))) != digest:
        raise LineageError(f"{path}: its files no longer hash to the digest its manifest records (edited or damaged)")
    return digest


def fork_start_policy(run_dir: Path, info: dict) -> tuple[str, str]:
    """(path, digest) of the policy a fork starts from: its own copy of the parent's policy
    entering iteration N (entering_stage), checked against the digest recorded when the fork
    was made."""
    parent, run_dir = info["parent"], Path(run_dir)
    first = parent["iteration"]
    start = entering_stage(first, bool(info["recipe"].get("seed_training")))
    path = runs.StageDir(run_dir, *start).path / POLICY_FOLDER
    # forks made before digests were recorded: the policy their first train stage was trained from
    # (its input keyed by the artifact's name)
    own_train = runs.StageDir(run_dir, *trained_stage(first)).manifest()
    recorded = parent.get("policy_digest") or (own_train["inputs"].get(POLICY_FOLDER) if own_train else None)
    remedy = (f"restore it from the parent's superseded/ folder or a backup, or fork the parent again "
              f"(`selfplay fork {parent['run_dir']} --from-iteration {first} ...`)")
    try:
        digest = _checked_policy(run_dir, *start)
    except LineageError as error:
        raise LineageError(f"fork {run_dir}: the policy it starts from is not intact: {error}; {remedy}") from None
    if recorded is not None and digest != recorded:
        raise LineageError(f"fork {run_dir}: {path} is not the parent's policy the fork started from (digest "
                           f"{digest[:12]}, run.json records {recorded[:12]}); {remedy}")
    return str(path), digest


def _check_fork_adapter(start_policy: Path, recipe: Recipe) -> None:
    """A fork under train.lora continues the parent's adapter: a train.lora that describes another
    one is refused here, before the fork is made, not at its first train stage."""
    from selfplay.models.adapter import is_adapter, lora_mismatch

    lora = recipe.train.lora
    if lora is not None and is_adapter(start_policy):
        mismatch = lora_mismatch(start_policy, lora.r, lora.alpha, lora.target_modules)
        if mismatch:
            raise LineageError(f"cannot fork: {mismatch}; nothing was created")


def _share_iteration(parent_dir: Path, fork_tmp: Path, iteration: int, copied: list) -> None:
    """The fork's own folder for a shared iteration: the parent's committed stages only
    (no temporary folders, failure records or training checkpoints)."""
    source = _iteration_dir(parent_dir, iteration)
    target = _iteration_dir(fork_tmp, iteration)
    target.mkdir()
    for stage in sorted(source.iterdir()):
        if stage.is_dir() and runs.StageDir(parent_dir, iteration, stage.name).manifest() is not None:
            runs.link_tree(stage, target / stage.name, copied)


def record_fork(parent_dir: Path, record: dict) -> None:
    """Add a fork to its parent's run.json under the run.json lock (runs.run_json_lock, not the
    driver's: a running parent can be forked), so forks made at once never drop each other."""
    with runs.run_json_lock(parent_dir):
        info = read_run(parent_dir)
        runs.write_json_atomic(Path(parent_dir) / "run.json", {**info, "forks": info.get("forks", []) + [record]})


def create_fork(parent_dir: Path, fork_dir: Path, from_iteration: int, recipe: Recipe) -> dict:
    """A new run starting at `from_iteration` from the parent's policy at that point.

    Iterations 1..from_iteration-1 become the fork's own folders of hard links to the parent's
    files. The fork is built in a temporary folder next to fork_dir and renamed into place, then
    recorded in the parent's run.json; a failure (a read-only parent, a full disk) removes the
    new fork again, leaving nothing behind.
    """
    parent_dir, fork_dir = Path(parent_dir), Path(fork_dir)
    parent = read_run(parent_dir)
    if fork_dir.exists() and (not fork_dir.is_dir() or any(fork_dir.iterdir())):
        raise LineageError(f"{fork_dir}: already exists; choose another --name")
    check_run_dir(fork_dir)  # not inside another run
    if not 1 <= from_iteration <= recipe.iterations:
        raise LineageError(f"--from-iteration must be between 1 and iterations ({recipe.iterations}), "
                           f"got {from_iteration}")
    policy_digest = None
    if from_iteration > 1:
        start = entering_stage(from_iteration, bool(recipe.seed_training))
        if runs.StageDir(parent_dir, *start).manifest() is None:
            raise LineageError(f"{parent_dir}: iteration {start[0]} has no finished {start[1]} stage to start from")
        try:
            policy_digest = _checked_policy(parent_dir, *start)
        except LineageError as error:
            raise LineageError(f"cannot fork: {error}") from None
        _check_fork_adapter(runs.StageDir(parent_dir, *start).path / POLICY_FOLDER, recipe)
    if recipe.tracking.group is None:
        recipe.tracking.group = parent["recipe"].get("tracking", {}).get("group") or parent["name"]
    shared = list(range(1, from_iteration))
    pointer = {"run_dir": str(parent_dir.resolve()), "run_id": parent["run_id"], "iteration": from_iteration,
               "policy_digest": policy_digest, "shared_iterations": shared}
    tmp = fork_dir.parent / f".{fork_dir.name}.forking-{uuid.uuid4().hex[:8]}"
    copied = []
    try:
        fork_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for iteration in shared:
            _share_iteration(parent_dir, tmp, iteration, copied)
        pointer["shared_as"] = "copies" if copied else "hard links"
        info = _new_run_info(recipe, pointer)
        _write_recipe_files(tmp, info, recipe)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LineageError(f"{error.filename or fork_dir}: cannot create the fork ({error.strerror or error}); "
                           f"nothing was created") from None
    if copied:
        log.warning("fork %s: %d shared file(s) copied, not hard-linked (e.g. %s); they take disk space",
                    fork_dir, len(copied), copied[0])
    try:
        # The atomic step that decides between forks of one name made at once: rename(2) onto an
        # existing folder succeeds only while it is empty, so exactly one of them gets there.
        os.rename(tmp, fork_dir)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if fork_dir.exists():
            raise LineageError(f"{fork_dir}: already exists; choose another --name") from None
        raise LineageError(f"{fork_dir}: cannot create the fork ({error.strerror or error}); "
                           f"nothing was created") from None
    record = {"run_dir": str(fork_dir.resolve()), "run_id": info["run_id"], "iteration": from_iteration}
    try:
        record_fork(parent_dir, record)
    except (OSError, LineageError) as error:
        shutil.rmtree(fork_dir, ignore_errors=True)  # our own fork, just made: nothing refers to it yet
        if isinstance(error, LineageError):
            raise
        raise LineageError(f"{parent_dir / 'run.json'}: cannot record the fork there ({error.strerror or error}); "
                           f"nothing was created: make the parent run writable (`selfplay lineage` finds forks "
                           f"through it)") from None
    return info


# -- redo ------------------------------------------------------------------------------------
def iteration_folders(run_dir: Path) -> dict[int, Path]:
    return {int(match.group(1)): path for path in Path(run_dir).iterdir()
            if (match := ITERATION_FOLDER.match(path.name))}


def supersede_from(run_dir: Path, iteration: int, note: dict | None = None) -> Path | None:
    """Move iterations >= `iteration` to superseded/<time>/ with a reason.json (never deleted)."""
    info = read_run(run_dir)
    first = info["parent"]["iteration"] if info.get("parent") else 0
    if not first <= iteration <= info["recipe"]["iterations"]:
        where = f"the fork's first iteration ({first})" if first else "0"
        raise LineageError(f"--from-iteration must be between {where} and iterations "
                           f"({info['recipe']['iterations']}), got {iteration}")
    later = [path for number, path in sorted(iteration_folders(run_dir).items()) if number >= iteration]
    if not later:
        return None
    return runs.supersede(run_dir, later, {"reason": f"resume --from-iteration {iteration}: iterations >= "
                                                     f"{iteration} are redone", "from_iteration": iteration,
                                           **(note or {})})


# -- status and lineage ----------------------------------------------------------------------
def _failure(path: Path) -> str:
    try:
        return str(runs.read_json(path)["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"(failure record {path.name} is damaged)"


def _stage_names(recipe, folder: Path, iteration: int, forked: bool) -> list[str]:
    """The pipeline's stages of the iteration, then any other stage folder found there (a run
    of an older recipe schema lists only its folders)."""
    from selfplay import pipeline

    listed = [stage.name for stage in pipeline.stages(recipe, iteration, forked)] if recipe else []
    found = sorted({p.name.split(".")[0] for p in folder.iterdir()} - set(listed)) if folder.is_dir() else []
    return listed + found


def stage_status(run_dir: Path, lock_held: bool) -> list[dict]:
    """Every stage of a run, in pipeline order: done / running / interrupted / failed / pending."""
    from pydantic import ValidationError

    from selfplay.recipe import Recipe

    info = read_run(run_dir)
    try:  # without importing the scoring function: status must not need the judge's code
        recipe = Recipe.model_validate(info["recipe"], context={"skip_imports": True})
    except ValidationError:  # written by an older schema: its stage folders are listed as found
        recipe = None
    rows = []
    parent = info.get("parent") or {}
    shared = set(parent.get("shared_iterations", []))
    for iteration in range(0, info["recipe"]["iterations"] + 1):
        folder = _iteration_dir(run_dir, iteration)
        names = _stage_names(recipe, folder, iteration, forked=parent.get("iteration", 1) > 1)
        # forks made before hard-linked sharing used symlinks to the parent's folders
        is_shared = iteration in shared or (0 < iteration < parent.get("iteration", 0) and folder.is_symlink())
        for name in names:
            row = {"iteration": iteration, "stage": name, "shared": is_shared}
            stage = runs.StageDir(run_dir, iteration, name)
            manifest = stage.manifest()
            if manifest and manifest["status"] == "done":
                row.update(state="done", seconds=manifest.get("seconds", 0.0))
            elif stage.tmp.exists() and lock_held:
                row["state"] = "running"
            elif stage.failed_path.exists():
                row.update(state="failed", error=_failure(stage.failed_path))
            elif stage.tmp.exists():
                row["state"] = "interrupted"
            elif stage.manifest_path.exists():
                row["state"] = "damaged"  # a manifest we cannot read: the next start redoes the stage
            else:
                row["state"] = "pending"
            rows.append(row)
    return rows


def lineage_tree(run_dir: Path) -> list[str]:
    """Lines of the tree of runs and forks around run_dir, from its root, with checkpoints."""
    root = Path(run_dir).resolve()
    read_run(root)
    seen = {root}
    while (parent := read_run(root).get("parent")) and Path(parent["run_dir"]) not in seen:
        if not (Path(parent["run_dir"]) / "run.json").exists():
            break  # the parent was moved or deleted: the tree starts at the oldest run still here
        root = Path(parent["run_dir"])
        seen.add(root)
    lines, visited = [], {root}

    def visit(path: Path, depth: int, pointer: dict | None):
        info = read_run(path)
        pad = "  " * depth
        from_iteration = pointer["iteration"] if pointer else None
        where = f" (fork from iteration {from_iteration})" if from_iteration else ""
        lines.append(f"{pad}{info['name']} [{info['run_id']}] {path}{where}")
        recorded = (info.get("parent") or {}).get("policy_digest")
        if from_iteration and recorded:
            start = entering_stage(from_iteration, bool(info["recipe"].get("seed_training")))
            parent_now = runs.StageDir(info["parent"]["run_dir"], *start).manifest()
            redone = "" if parent_now and parent_now["outputs"].get(POLICY_FOLDER) == recorded else \
                " (the parent has redone that iteration since; the fork keeps its own copy)"
            lines.append(f"{pad}  starts from policy {recorded[:12]}{redone}")
        for iteration in range(from_iteration or 1, info["recipe"]["iterations"] + 1):
            manifest = runs.StageDir(path, *trained_stage(iteration)).manifest()
            if not manifest or POLICY_FOLDER not in manifest["outputs"]:
                continue
            reference = manifest.get("reference") or {}
            metrics = (runs.StageDir(path, iteration, EVALUATE).manifest() or {}).get("metrics") or {}
            win = metrics.get("win_rate_vs_initial")
            win = f" win_rate_vs_initial={win:.3f}" if isinstance(win, (int, float)) else ""
            lines.append(f"{pad}  iter {iteration}: policy {manifest['outputs'][POLICY_FOLDER][:12]} "
                         f"reference={reference.get('rule')}"
                         f"{':' + str(reference['digest'])[:12] if reference.get('digest') else ''}{win}")
        for fork in info.get("forks", []):
            fork_path = Path(fork["run_dir"])
            if (fork_path / "run.json").exists() and fork_path not in visited:
                visited.add(fork_path)
                visit(fork_path, depth + 1, fork)

    visit(root, 0, None)
    return lines


def lock_is_held(run_dir: Path) -> bool:
    """Whether a driver holds the run's lock; creates nothing (status works on read-only runs)."""
    try:
        handle = open(Path(run_dir) / ".lock")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


# -- verify ----------------------------------------------------------------------------------
def verify_run(run_dir: Path) -> list[dict]:
    """Re-hash every committed output of every stage (no size/mtime shortcut) against its
    manifest: one row per stage, `ok` or what no longer matches. A train.lora adapter's base is
    re-hashed too (`base_changed`): an adapter on another base is another policy. Slow on big
    checkpoints by design; resume's own check stays the fast fingerprint one."""
    from selfplay.models.adapter import base_problem

    rows, bases = [], {}  # bases: each adapter base's check, made once
    for iteration, folder in sorted(iteration_folders(run_dir).items()):
        for stage_folder in sorted(p for p in folder.iterdir() if p.is_dir() and "." not in p.name):
            stage = runs.StageDir(run_dir, iteration, stage_folder.name)
            manifest = stage.manifest()
            if manifest is None:
                rows.append({"iteration": iteration, "stage": stage.name, "ok": False,
                             "problem": "manifest missing or damaged", "base_changed": False})
                continue
            bad = [name for name, digest in manifest["outputs"].items()
                   if not (stage.path / name).exists() or runs.content_digest(runs.fingerprint(stage.path / name)) != digest]
            problems = [f"{', '.join(bad)} no longer hash to the manifest's record"] if bad else []
            base = None
            if POLICY_FOLDER in manifest["outputs"] and POLICY_FOLDER not in bad:
                base = base_problem(stage.path / POLICY_FOLDER, bases)  # a train.lora adapter's base
                problems += [f"{POLICY_FOLDER}: {base}"] if base else []
            rows.append({"iteration": iteration, "stage": stage.name, "ok": not problems,
                         "problem": "; ".join(problems), "base_changed": base is not None})
    return rows
