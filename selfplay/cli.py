"""The `selfplay` command: run | resume | fork | validate | status | verify | lineage | compare | make-tiny | doctor.

User mistakes (a bad recipe, a missing file, a locked run) end with one line on stderr and
exit code 2, before any work starts; anything else is a bug and keeps its traceback.
"""

import argparse
import contextlib
import gc
import os
import shlex
import signal
import sys
from pathlib import Path

from selfplay.console import printable
from selfplay.recipe import RecipeError, load_recipe, parse_recipe


def _fail(message: str) -> int:
    print(f"selfplay: error: {printable(message)}", file=sys.stderr)
    return 2


def print_summary(rows: list[dict]) -> None:
    """One line per iteration: its win rate, length and loss, and each stage's seconds (the
    columns are the pipeline's stages as they ran; `-` where an iteration has no such stage)."""
    from rich.console import Console
    from rich.table import Table

    stages = list(dict.fromkeys(name for row in rows for name in row["seconds"]))
    table = Table(title="selfplay: per-iteration results (stage timings in seconds)")
    for column in ["iter", "win_rate_vs_initial", "mean_tokens", "loss"] + stages:
        table.add_column(column, justify="right")

    def number(value, form):
        return "-" if value is None else format(value, form)

    for row in rows:
        table.add_row(str(row["iteration"]), number(row.get("win_rate_vs_initial"), ".3f"),
                      number(row.get("mean_response_tokens"), ".1f"), number(row.get("loss"), ".4g"),
                      *[number(row["seconds"].get(s), ".1f") for s in stages])
    Console(width=max(120, Console().width)).print(table)


_signals_received: list[int] = []


def _raise_interrupted(signum, frame):
    """SIGINT/SIGTERM -> KeyboardInterrupt, the one exception Ray's blocking calls (ray.get)
    let through from a signal handler (any other one turns into a SystemError there). It is a
    BaseException, so a stage's `except Exception` does not record it as a stage failure."""
    _signals_received.append(signum)
    # Further signals are ignored while the run stops (actors, W&B, the Ray cluster): seconds.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT and SIGTERM interrupt the main thread (cluster.start_ray keeps these handlers
    across ray.init, which would install its own)."""
    _signals_received.clear()
    previous = {number: signal.signal(number, _raise_interrupted) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if not _signals_received:  # after one, signals stay ignored until the run has stopped
            for number, handler in previous.items():
                signal.signal(number, handler)


def _report_interrupt(driver, run_dir: Path) -> int:
    """Shut Ray down and say in one line what stopped and how to go on; exit 128 + signal."""
    from selfplay import console

    console.quiet_actors()
    try:
        import ray

        ray.shutdown()
    except Exception:  # a cluster already gone: nothing left to stop
        pass
    # The interpreter's final garbage collection over torch/transformers/pyarrow objects takes
    # 5-10 s on a small CPU; nothing left needs it, so the stop is not held up by it.
    gc.freeze()
    signum = _signals_received[0] if _signals_received else signal.SIGINT
    where = f"iteration {driver.running[0]} stage {driver.running[1]}" if driver.running else "start-up"
    if (Path(run_dir) / "run.json").exists():
        advice = f"finished stages are kept: `selfplay resume {shlex.quote(str(run_dir))}` continues"
    else:  # stopped before the run was recorded: there is nothing to resume
        advice = "no run was recorded yet: run the same command again to start it"
    print(printable(f"selfplay: interrupted by {signal.Signals(signum).name} during {where}; {advice}"), file=sys.stderr)
    return 128 + signum


def _run(recipe, run_dir, args, parent=None) -> int:
    from selfplay.cluster import ClusterError
    from selfplay.driver import Driver, StageFailed
    from selfplay.failures import DeadEnd
    from selfplay.lineage import LineageError, RecipeChangedError
    from selfplay.runs import RunLockedError

    driver = Driver(recipe, run_dir, ray_address=args.ray_address, allow_changes=args.allow_changes)
    try:
        with _stop_on_signals():
            rows = driver.run(parent)
    except KeyboardInterrupt:
        return _report_interrupt(driver, run_dir)
    except (RunLockedError, RecipeChangedError, LineageError, ClusterError, DeadEnd) as error:
        return _fail(str(error))
    except StageFailed as error:
        print(printable(f"selfplay: error: {error}; finished stages are kept: `selfplay resume {run_dir}` continues"),
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


def _frozen_recipe(run_dir: Path, overrides: list[str], for_fork: bool = False):
    """A run's recipe with overrides applied: the frozen one, or the hand-edited run.json or
    recipe.yaml (the run then refuses it unless --allow-changes records the edit). A fork
    never inherits a hand edit of its parent: it takes the change as key=value instead."""
    from selfplay.lineage import LineageError, recipe_files
    from selfplay.recipe import apply_overrides

    state = recipe_files(run_dir)
    if for_fork and state["edits"]:
        path, keys = state["edits"][0]
        raise LineageError(f"{path} was edited by hand ({', '.join(keys)}): restore it, and give the change to "
                           f"the fork as key=value")
    return parse_recipe(apply_overrides(state["requested"], overrides))


def cmd_resume(args) -> int:
    from selfplay.lineage import (
        LineageError,
        RecipeChangedError,
        fork_start_policy,
        lock_is_held,
        read_run,
        recipe_change,
        supersede_from,
    )

    run_dir = Path(args.run_dir)
    try:
        recipe = _frozen_recipe(run_dir, args.overrides)
        info = read_run(run_dir)
        if info.get("parent") and info["parent"]["iteration"] > 1:
            fork_start_policy(run_dir, info)  # the driver checks again; this answers before Ray starts
        if args.from_iteration is not None:
            if lock_is_held(run_dir):
                return _fail(f"run directory {run_dir} is in use by another selfplay driver")
            recipe_change(run_dir, recipe, args.allow_changes)  # a refused change moves nothing aside
            moved = supersede_from(run_dir, args.from_iteration,
                                   {"changed_keys": sorted(item.split("=", 1)[0] for item in args.overrides)})
            if moved:
                print(f"iterations >= {args.from_iteration} moved aside to {moved} (reason.json says why)")
    except (LineageError, RecipeChangedError) as error:
        return _fail(str(error))
    except OSError as error:
        return _fail(f"{error.filename or run_dir}: {error.strerror or error}; nothing was moved")
    return _run(recipe, run_dir, args)


def _beta_kept_note(parent_train, train, overrides: list[str]) -> str | None:
    """A fork that changes train.loss keeps the parent's train.beta (its run.json records the
    number), which a recipe without beta would not get: say so when it is not the new loss's own."""
    from selfplay.methods import LOSSES

    if train.loss == parent_train.loss or any(item.strip().startswith("train.beta=") for item in overrides):
        return None
    own = LOSSES[train.loss].default_beta
    if train.beta == own:
        return None
    return (f"selfplay: note: train.loss {parent_train.loss} -> {train.loss} keeps the parent's train.beta "
            f"{train.beta:g}; {train.loss}'s own default is {own:g} (add train.beta={own:g} to use it)")


def cmd_fork(args) -> int:
    from selfplay.lineage import LineageError, create_fork, read_run
    from selfplay.recipe import check_run_name

    parent_dir = Path(args.run_dir)
    try:
        recipe = _frozen_recipe(parent_dir, args.overrides, for_fork=True)
        name = args.name if args.name is not None else f"{read_run(parent_dir)['name']}-fork-{args.from_iteration}"
        try:
            recipe.name = check_run_name(name)
        except ValueError as error:
            raise RecipeError(f"--name: {error}") from None
        fork_dir = Path(args.run_dir_out) if args.run_dir_out else parent_dir.parent / recipe.name
        info = create_fork(parent_dir, fork_dir, args.from_iteration, recipe)
    except LineageError as error:
        return _fail(str(error))
    print(f"fork {fork_dir} of {parent_dir} from iteration {args.from_iteration}")
    note = _beta_kept_note(_frozen_recipe(parent_dir, [], for_fork=True).train, recipe.train, args.overrides)
    if note:
        print(printable(note), file=sys.stderr)
    return _run(recipe, fork_dir, args, parent=info["parent"])


def cmd_validate(args) -> int:
    """The recipe, then everything it points at (model folders, tiny kinds, prompts, seed pairs),
    exactly as `run` checks them before writing anything."""
    from selfplay.preflight import check_recipe

    if args.schema_only:  # the recipe alone: its files and models may live on the cluster
        recipe = load_recipe(args.recipe, args.overrides, check_paths=False)
        print(f"{args.recipe}: schema ok ({recipe.iterations} iterations, judge={recipe.annotate.type}, "
              f"loss={recipe.train.loss}; model folders and data files not checked)")
        return 0
    recipe = load_recipe(args.recipe, args.overrides)
    pool = check_recipe(recipe)
    duplicates = f" ({pool.duplicates} duplicates dropped)" if pool.duplicates else ""
    from selfplay.methods import PAIR_RULES

    samples = PAIR_RULES[recipe.pairs.type].samples_per_prompt or recipe.generate.samples_per_prompt
    print(f"{args.recipe}: ok ({recipe.iterations} iterations, {len(pool.prompts)} prompts{duplicates}, "
          f"K={samples}, "
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
        print(printable(f"iter {row['iteration']:>3}  {row['stage']:<14} {row['state']:<11} {timing}{shared}{error}"))
    return 0


def cmd_verify(args) -> int:
    from selfplay.lineage import LineageError, read_run, verify_run

    run_dir = Path(args.run_dir)
    try:
        read_run(run_dir)
        rows = verify_run(run_dir)
    except LineageError as error:
        return _fail(str(error))
    for row in rows:
        print(printable(f"iter {row['iteration']:>3}  {row['stage']:<14} {'ok' if row['ok'] else 'DAMAGED  ' + row['problem']}"))
    damaged = [row for row in rows if not row["ok"]]
    if any(row["base_changed"] for row in damaged):  # a resume would retrain the whole run on the new base
        print("selfplay: the base the run's LoRA adapters were trained on changed: restore it, then verify again",
              file=sys.stderr)
        return 1
    if damaged:
        print(f"selfplay: {len(damaged)} stage(s) damaged: `selfplay resume {run_dir}` redoes them "
              f"(their old folders go to superseded/)", file=sys.stderr)
        return 1
    print(f"all {len(rows)} stages match their manifests")
    return 0


def cmd_lineage(args) -> int:
    from selfplay.lineage import LineageError, lineage_tree

    try:
        print("\n".join(map(printable, lineage_tree(Path(args.run_dir)))))
    except LineageError as error:
        return _fail(str(error))
    return 0


def cmd_export(args) -> int:
    from selfplay.export import export_iteration
    from selfplay.lineage import LineageError

    try:
        out = export_iteration(Path(args.run_dir), args.iteration, Path(args.out))
    except LineageError as error:
        return _fail(str(error))
    print(printable(f"iteration {args.iteration} of {args.run_dir}: {out} (merged HF folder, model card README.md)"))
    return 0


def cmd_compare(args) -> int:
    """Evaluation metrics per iteration of several runs: a table, and with --out a PNG per metric
    and a self-contained HTML report (forks are shown with their parent's shared iterations)."""
    from selfplay.report.compare import CompareError, compare

    try:
        written = compare(args.run_dirs, args.metric, args.out, args.plots, args.examples, args.by,
                          args.example_iterations)
    except CompareError as error:
        return _fail(str(error))
    if "plots" in written:  # none when every compared metric is constant (a table row each)
        print(f"plots: {written['plots_folder']}" if written["plots"] else "plots: none (every compared metric is "
              "the same at every iteration: see the table)")
    if "report" in written:
        print(f"report: {written['report']}")
    return 0


def cmd_doctor(args) -> int:
    """One line per check of what a run needs here (and on the cluster with --ray-address)."""
    from selfplay.doctor import run_checks

    checks = run_checks(args.run_dir, args.ray_address, args.min_free_gib, args.expect_gpus)
    for check in checks:
        print(check.line())
    failed = [check.name for check in checks if check.status == "fail"]
    print(f"selfplay doctor: {len(failed)} failed ({', '.join(failed)})" if failed else "selfplay doctor: all checks passed")
    return 1 if failed else 0


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
        command.add_argument("--verbose", action="store_true",
                             help="also show Ray, vLLM and DeepSpeed logs on the console (always in <run>/logs/driver.log)")
    validate = sub.add_parser("validate", help="check a recipe without running it")
    validate.add_argument("recipe")
    validate.add_argument("overrides", nargs="*")
    validate.add_argument("--schema-only", action="store_true",
                          help="check the recipe's fields and their rules only, not the files and models it names")
    doctor = sub.add_parser("doctor", help="check the environment a run needs, one line per check")
    doctor.add_argument("--run-dir", default="runs", help="where runs will be written (its disk's free space)")
    doctor.add_argument("--ray-address", help="also check this Ray cluster: resources, and versions on every node")
    doctor.add_argument("--min-free-gib", type=float, default=20.0, help="free disk the run directory needs")
    doctor.add_argument("--expect-gpus", type=int, default=0, help="fail unless CUDA sees at least this many GPUs")
    verify = sub.add_parser("verify", help="re-hash every stage's outputs against its manifest")
    verify.add_argument("run_dir")
    status = sub.add_parser("status", help="per iteration and stage: done / running / failed / pending, with timings")
    status.add_argument("run_dir")
    tree = sub.add_parser("lineage", help="the tree of runs, forks and checkpoints, with hashes and references")
    tree.add_argument("run_dir")
    export = sub.add_parser("export", help="one iteration's policy as an HF folder (safetensors, config, tokenizer) "
                            "with a model card of its lineage")
    export.add_argument("run_dir")
    export.add_argument("--iteration", type=int, required=True)
    export.add_argument("--out", required=True, help="a new or empty folder")
    compare = sub.add_parser("compare", help="evaluation metrics per iteration of several runs: table, plots, HTML report")
    compare.add_argument("run_dirs", nargs="+")
    compare.add_argument("--metric", nargs="+", action="extend", metavar="NAME",
                         help="metrics to show (default: every numeric metric of the evaluations)")
    compare.add_argument("--out", help="write a self-contained HTML report here, e.g. report.html")
    compare.add_argument("--plots", help="folder for the PNG plots (default with --out: <report>-plots/)")
    compare.add_argument("--examples", type=int, default=3, help="eval prompts per iteration shown in the report")
    compare.add_argument("--example-iterations", nargs="+", type=int, metavar="N",
                         help="the iterations whose examples the report shows (default: every evaluated one)")
    compare.add_argument("--by", choices=["run", "method"], default="run",
                         help="method: the report's run grid grouped by method (train.loss); also shown with over 3 runs")
    tiny = sub.add_parser("make-tiny", help="build (or find in the cache) a tiny local model and print its folder")
    from selfplay.models import TINY_BUILDERS

    tiny.add_argument("kind", nargs="?", default="llama", choices=list(TINY_BUILDERS))
    tiny.add_argument("--seed", type=int, default=0)
    return parser


COMMANDS = {"run": cmd_run, "resume": cmd_resume, "fork": cmd_fork, "validate": cmd_validate, "status": cmd_status,
            "verify": cmd_verify, "lineage": cmd_lineage, "compare": cmd_compare, "export": cmd_export,
            "make-tiny": cmd_make_tiny, "doctor": cmd_doctor}


# A reader that goes away (`selfplay status RUN | head -1`) ends the command quietly with the
# status the shell reports for Unix tools killed by SIGPIPE: 128 + 13.
BROKEN_PIPE_EXIT = 141


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:  # output that fitted the buffer meets the closed pipe here (--help's SystemExit too)
            sys.stdout.flush()
    except BrokenPipeError:
        # Python would flush stdout again at exit and print "Exception ignored ... BrokenPipeError"
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options such as --run-dir
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-") or "=" not in item]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from selfplay import console

    console.setup(verbose=getattr(args, "verbose", False))
    from selfplay.prompts import PromptError

    try:
        return COMMANDS[args.command](args)
    except (RecipeError, PromptError) as error:
        return _fail(str(error))


if __name__ == "__main__":
    sys.exit(main())
