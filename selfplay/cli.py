"""The `selfplay` command: run | resume | validate | status | make-tiny.

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


def _run(recipe, run_dir, args) -> int:
    from selfplay.driver import Driver, RecipeChangedError
    from selfplay.prompts import PromptError
    from selfplay.runs import RunLockedError

    try:
        rows = Driver(recipe, run_dir, ray_address=args.ray_address, allow_changes=args.allow_changes).run()
    except (RunLockedError, RecipeChangedError, PromptError) as error:
        return _fail(str(error))
    print_summary(rows)
    print(f"run directory: {run_dir}")
    return 0


def cmd_run(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / recipe.name)
    return _run(recipe, run_dir, args)


def cmd_resume(args) -> int:
    import yaml

    run_dir = Path(args.run_dir)
    if not (run_dir / "recipe.yaml").exists():
        return _fail(f"{run_dir}: not a selfplay run directory (no recipe.yaml)")
    data = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    from selfplay.recipe import apply_overrides

    recipe = parse_recipe(apply_overrides(data, args.overrides))
    return _run(recipe, run_dir, args)


def cmd_validate(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    from selfplay.prompts import load_prompts, split_prompts

    prompts = load_prompts(recipe.prompts.path, recipe.prompts.field)
    split_prompts(len(prompts), recipe.iterations, recipe.prompts.per_iteration, recipe.prompts.eval_size,
                  recipe.prompts.shuffle_seed, recipe.prompts.reuse)
    print(f"{args.recipe}: ok ({recipe.iterations} iterations, {len(prompts)} prompts, "
          f"K={recipe.generate.samples_per_prompt}, judge={recipe.annotate.type}, loss={recipe.train.loss})")
    return 0


def cmd_status(args) -> int:
    from selfplay.runs import read_json

    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").exists():
        return _fail(f"{run_dir}: not a selfplay run directory (no run.json)")
    for iteration_dir in sorted(run_dir.glob("iter-*")):
        for stage in sorted(p for p in iteration_dir.iterdir() if p.is_dir()):
            manifest = stage / "manifest.json"
            if stage.name.endswith(".tmp"):
                print(f"{iteration_dir.name} {stage.name[:-4]:<9} interrupted (partial output, will be redone)")
            elif manifest.exists():
                data = read_json(manifest)
                print(f"{iteration_dir.name} {stage.name:<9} {data['status']:<8} {data['seconds']:8.1f} s")
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
    resume.add_argument("overrides", nargs="*")
    for command in (run, resume):
        command.add_argument("--ray-address", help="connect to an existing Ray cluster")
        command.add_argument("--allow-changes", action="store_true", help="accept a recipe that differs from the run's")
    validate = sub.add_parser("validate", help="check a recipe without running it")
    validate.add_argument("recipe")
    validate.add_argument("overrides", nargs="*")
    status = sub.add_parser("status", help="per iteration and stage: done / interrupted, with timings")
    status.add_argument("run_dir")
    tiny = sub.add_parser("make-tiny", help="build (or find in the cache) a tiny local model and print its folder")
    tiny.add_argument("kind", nargs="?", default="llama")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


COMMANDS = {"run": cmd_run, "resume": cmd_resume, "validate": cmd_validate, "status": cmd_status,
            "make-tiny": cmd_make_tiny}


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
