"""`selfplay compare RUN_DIR [RUN_DIR ...] [--metric NAME ...] [--out report.html] [--by method]`:
read the runs, print the table, and with --out (or --plots) write the PNGs and the HTML report.
A metric with one value in every run and iteration is constant: a table cell, with no plot.

Everything is checked before anything is written: a directory that is not a run, an unknown
metric, an --out that is a folder, or a samples/eval file that no longer matches its manifest
(read through the same hash check as the stages) is a CompareError (one line, exit 2) and
leaves no file.
"""

from pathlib import Path

from selfplay.artifacts import ArtifactDamaged
from selfplay.lineage import LineageError
from selfplay.report.decide import KEY_NAMES, is_constant
from selfplay.report.read import RunSeries, metric_names, read_examples, read_series

GROUPINGS = ("run", "method")


class CompareError(ValueError):
    pass


def default_plots_dir(out: Path) -> Path:
    """report.html -> report-plots/ next to it."""
    return out.with_name(f"{out.stem}-plots")


def load_runs(run_dirs: list[str], requested: list[str] | None):
    """(series per run, metrics to show); the same directory given twice counts once."""
    all_series, seen = [], set()
    for run_dir in map(Path, run_dirs):
        if run_dir.resolve() in seen:
            continue
        seen.add(run_dir.resolve())
        try:
            all_series.append(read_series(run_dir))
        except (LineageError, ArtifactDamaged) as error:
            raise CompareError(str(error)) from None
    available = metric_names(all_series)
    if not available:
        raise CompareError(f"nothing to compare: no finished evaluate stage in {', '.join(run_dirs)}")
    for name in requested or []:
        if name not in available:
            raise CompareError(f"unknown --metric {name!r}: the runs have {', '.join(available)}")
    return all_series, list(dict.fromkeys(requested)) if requested else available


def constant_metrics(all_series: list[RunSeries], metrics: list[str]) -> list[str]:
    """The metrics (other than the headline's) with one value across every run and iteration."""
    return [metric for metric in metrics if metric not in KEY_NAMES and is_constant(
        [value for s in all_series for t in s.metrics if (value := s.value(t, metric)) is not None])]


def compare(run_dirs: list[str], requested: list[str] | None = None, out: str | None = None,
            plots_dir: str | None = None, examples_per_iteration: int = 3, by: str = "run",
            example_iterations: list[int] | None = None) -> dict:
    """Print the table; write the plots and the report when asked. Returns the paths written."""
    from selfplay.report.table import print_table

    if by not in GROUPINGS:
        raise CompareError(f"--by {by}: must be one of {', '.join(GROUPINGS)}")
    if examples_per_iteration < 0:
        raise CompareError(f"--examples must be 0 or more, got {examples_per_iteration}")
    all_series, metrics = load_runs(run_dirs, requested)
    evaluated = sorted({t for s in all_series for t in s.metrics})
    for iteration in example_iterations or []:
        if iteration not in evaluated:
            raise CompareError(f"--example-iterations {iteration}: not an evaluated iteration "
                               f"(the runs have {', '.join(map(str, evaluated))})")
    out_path = Path(out) if out else None
    if out_path is not None and (out_path.is_dir() or out_path.suffix.lower() not in (".html", ".htm")):
        raise CompareError(f"--out {out}: must be a file name ending in .html")
    plots_path = Path(plots_dir) if plots_dir else (default_plots_dir(out_path) if out_path else None)
    if plots_path is not None and plots_path.exists() and not plots_path.is_dir():
        raise CompareError(f"--plots {plots_path}: exists and is not a folder")
    try:  # every file the report shows, read (and hash-checked) before anything is printed or written
        examples = (read_examples(all_series, examples_per_iteration, example_iterations)
                    if out_path is not None else None)
    except ArtifactDamaged as error:
        raise CompareError(str(error)) from None
    print_table(all_series, metrics)
    written = {}
    if plots_path is None:
        return written
    from selfplay.report.html import render_report
    from selfplay.report.plots import plot_metric, write_bytes_atomic, write_plots

    constant = constant_metrics(all_series, metrics)
    plots = {metric: plot_metric(all_series, metric, (5.2, 3.2) if metric in KEY_NAMES else (4.2, 2.7))
             for metric in metrics if metric not in constant}
    try:
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
        written["plots"] = write_plots({metric: plot.png for metric, plot in plots.items()}, plots_path)
        written["plots_folder"] = plots_path
        if out_path is not None:
            html = render_report(all_series, metrics, constant, plots, examples, by)
            write_bytes_atomic(out_path, html.encode("utf-8"))
            written["report"] = out_path
    except OSError as error:
        raise CompareError(f"{error.filename or out_path or plots_path}: cannot be written "
                           f"({error.strerror or error})") from None
    return written
