"""The `selfplay` command: run | resume | fork | validate | status | lineage | compare | make-tiny.

User mistakes (a bad recipe, a missing file, a locked run) end with one line on stderr and
exit code 2, before any work starts; anything else is a bug and keeps its traceback.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from selfplay.recipe import RecipeError, load_recipe, parse_recipe


def _fail(message: str) -> int:
    print(f"selfplay: error: {message}", file=sys.stderr)
    return 2


def print_summary(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    stages = ["generate", "annotate", "pairs", "train", "evaluate"]
    table = Table(title="selfplay: per-iteration results (stage timings in seconds)")
    for column in ["iter", "win_rate_vs_initial", "mean_tokens", "loss"] + stages:
        table.add_column(column, justify="right")
    for row in rows:
        loss = row.get("loss")
        table.add_row(str(row["iteration"]), f"{row['win_rate_vs_initial']:.3f}", f"{row['mean_response_tokens']:.1f}",
                      "-" if loss is None else f"{loss:.4g}",
                      *[f"{row['seconds'][s]:.1f}" if s in row["seconds"] else "-" for s in stages])
    Console(width=max(120, Console().width)).print(table)


def _run(recipe, run_dir, args, parent=None) -> int:
    from selfplay.cluster import ClusterError
    from selfplay.driver import Driver, StageFailed
    from selfplay.lineage import LineageError, RecipeChangedError
    from selfplay.runs import RunLockedError

    try:
        rows = Driver(recipe, run_dir, ray_address=args.ray_address, allow_changes=args.allow_changes).run(parent)
    except (RunLockedError, RecipeChangedError, LineageError, ClusterError) as error:
        return _fail(str(error))
    except StageFailed as error:
        print(f"selfplay: error: {error}; finished stages are kept: `selfplay resume {run_dir}` continues",
              file=sys.stderr)
        return 1
    except OSError as error:  # disk full, read-only run directory: nothing half-written counts
        return _fail(f"{error.strerror or error}: {error.filename or run_dir} (finished stages are kept; "
                     f"fix it and run `selfplay resume {run_dir}`)")
    print_summary(rows)
    print(f"run directory: {run_dir}")
    return 0


def cmd_run(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / recipe.name)
    return _run(recipe, run_dir, args)


def _frozen_recipe(run_dir: Path, overrides: list[str]):
    """A run's frozen recipe (run.json) with overrides applied."""
    from selfplay.lineage import read_run
    from selfplay.recipe import apply_overrides

    return parse_recipe(apply_overrides(read_run(run_dir)["recipe"], overrides))


def cmd_resume(args) -> int:
    from selfplay.lineage import LineageError, lock_is_held, supersede_from

    run_dir = Path(args.run_dir)
    try:
        recipe = _frozen_recipe(run_dir, args.overrides)
        if args.from_iteration is not None:
            if lock_is_held(run_dir):
                return _fail(f"run directory {run_dir} is in use by another selfplay driver")
            moved = supersede_from(run_dir, args.from_iteration)
            if moved:
                print(f"iterations >= {args.from_iteration} moved aside to {moved}")
    except LineageError as error:
        return _fail(str(error))
    return _run(recipe, run_dir, args)


def cmd_fork(args) -> int:
    from selfplay.lineage import LineageError, create_fork, read_run

    parent_dir = Path(args.run_dir)
    try:
        recipe = _frozen_recipe(parent_dir, args.overrides)
        recipe.name = args.name or f"{read_run(parent_dir)['name']}-fork-{args.from_iteration}"
        fork_dir = Path(args.run_dir_out) if args.run_dir_out else parent_dir.parent / recipe.name
        info = create_fork(parent_dir, fork_dir, args.from_iteration, recipe)
    except LineageError as error:
        return _fail(str(error))
    print(f"fork {fork_dir} of {parent_dir} from iteration {args.from_iteration}")
    return _run(recipe, fork_dir, args, parent=info["parent"])


def cmd_validate(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    from selfplay.prompts import load_prompt_pool

    prompts, _, _, _ = load_prompt_pool(recipe)
    if recipe.seed_training is not None:
        from selfplay.prompts import read_jsonl_records
        from selfplay.train.seed_pairs import FIELDS

        read_jsonl_records(recipe.seed_training.path, FIELDS, "a seed pair")
    print(f"{args.recipe}: ok ({recipe.iterations} iterations, {len(prompts)} prompts, "
          f"K={1 if recipe.pairs.type == 'drift' else recipe.generate.samples_per_prompt}, "
          f"judge={recipe.annotate.type}, loss={recipe.train.loss})")
    return 0


def cmd_status(args) -> int:
    from selfplay.lineage import LineageError, lock_is_held, stage_status

    run_dir = Path(args.run_dir)
    try:
        rows = stage_status(run_dir, lock_is_held(run_dir))
    except LineageError as error:
        return _fail(str(error))
    for row in rows:
        timing = f"{row['seconds']:8.1f} s" if "seconds" in row else ""
        shared = "  (shared with parent run)" if row["shared"] else ""
        error = f"  {row['error']}" if "error" in row else ""
        print(f"iter {row['iteration']:>3}  {row['stage']:<14} {row['state']:<11} {timing}{shared}{error}")
    return 0


def cmd_lineage(args) -> int:
    from selfplay.lineage import LineageError, lineage_tree

    try:
        print("\n".join(lineage_tree(Path(args.run_dir))))
    except LineageError as error:
        return _fail(str(error))
    return 0


def cmd_compare(args) -> int:
    """Per-iteration evaluation metrics of several runs side by side (forks read their parents')."""
    from rich.console import Console
    from rich.table import Table

    from selfplay.lineage import LineageError, read_run
    from selfplay.runs import StageDir

    table = Table(title="win_rate_vs_initial / mean response tokens per iteration")
    table.add_column("iter", justify="right")
    columns = []
    try:
        for run_dir in map(Path, args.run_dirs):
            info = read_run(run_dir)
            table.add_column(f"{info['name']} [{info['run_id'][:6]}]", justify="right")
            columns.append((run_dir, info["recipe"]["iterations"]))
    except LineageError as error:
        return _fail(str(error))
    for iteration in range(1, max(n for _, n in columns) + 1):
        cells = []
        for run_dir, _ in columns:
            manifest = StageDir(run_dir, iteration, "evaluate").manifest()
            metrics = manifest["metrics"] if manifest else None
            cells.append(f"{metrics['win_rate_vs_initial']:.3f} / {metrics['mean_response_tokens']:.0f}" if metrics else "-")
        table.add_row(str(iteration), *cells)
    Console(width=max(120, Console().width)).print(table)
    return 0


def cmd_make_tiny(args) -> int:
    from selfplay.models import resolve_model

    print(resolve_model(f"tiny:{args.kind}", args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfplay", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run all iterations of a recipe (finished stages are skipped)")
    run.add_argument("recipe")
    run.add_argument("overrides", nargs="*", help="key=value, e.g. train.beta=0.01")
    run.add_argument("--run-dir", help="default: runs/<recipe name>")
    resume = sub.add_parser("resume", help="continue a stopped or crashed run from its first unfinished stage")
    resume.add_argument("run_dir")
    resume.add_argument("overrides", nargs="*", help="key=value changes, recorded in run.json")
    resume.add_argument("--from-iteration", type=int, help="redo iterations N.. (later ones are moved aside)")
    fork = sub.add_parser("fork", help="a new run from a run's policy at the start of iteration N, with changes")
    fork.add_argument("run_dir")
    fork.add_argument("overrides", nargs="*", help="key=value, e.g. train.beta=0.01")
    fork.add_argument("--from-iteration", type=int, required=True)
    fork.add_argument("--name", help="name of the new run (default: <parent>-fork-N)")
    fork.add_argument("--run-dir", dest="run_dir_out", help="default: next to the parent run")
    for command in (run, resume, fork):
        command.add_argument("--ray-address", help="connect to an existing Ray cluster")
        command.add_argument("--allow-changes", action="store_true", help="accept a recipe that differs from the run's")
    validate = sub.add_parser("validate", help="check a recipe without running it")
    validate.add_argument("recipe")
    validate.add_argument("overrides", nargs="*")
    status = sub.add_parser("status", help="per iteration and stage: done / running / failed / pending, with timings")
    status.add_argument("run_dir")
    tree = sub.add_parser("lineage", help="the tree of runs, forks and checkpoints, with hashes and references")
    tree.add_argument("run_dir")
    compare = sub.add_parser("compare", help="evaluation metrics per iteration of several runs side by side")
    compare.add_argument("run_dirs", nargs="+")
    tiny = sub.add_parser("make-tiny", help="build (or find in the cache) a tiny local model and print its folder")
    tiny.add_argument("kind", nargs="?", default="llama")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


COMMANDS = {"run": cmd_run, "resume": cmd_resume, "fork": cmd_fork, "validate": cmd_validate, "status": cmd_status,
            "lineage": cmd_lineage, "compare": cmd_compare, "make-tiny": cmd_make_tiny}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options such as --run-dir
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-") or "=" not in item]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=os.environ.get("SELFPLAY_LOG", "INFO"), format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    from selfplay.prompts import PromptError

    try:
        return COMMANDS[args.command](args)
    except (RecipeError, PromptError) as error:
        return _fail(str(error))


if __name__ == "__main__":
    sys.exit(main())
