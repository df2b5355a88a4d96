"""`selfplay compare RUN_DIR [RUN_DIR ...] [--metric NAME ...] [--out report.html]`: read the
runs, print the table, and with --out (or --plots) write the PNGs and the HTML report.

Everything is checked before anything is written: a directory that is not a run, an unknown
metric, an --out that is a folder, or a samples/eval file that no longer matches its manifest
(read through the same hash check as the stages) is a CompareError (one line, exit 2) and
leaves no file.
"""

from pathlib import Path

from selfplay.artifacts import ArtifactDamaged
from selfplay.lineage import LineageError
from selfplay.report.read import metric_names, read_examples, read_series


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
        except LineageError as error:
            raise CompareError(str(error)) from None
    available = metric_names(all_series)
    if not available:
        raise CompareError(f"nothing to compare: no finished evaluate stage in {', '.join(run_dirs)}")
    for name in requested or []:
        if name not in available:
            raise CompareError(f"unknown --metric {name!r}: the runs have {', '.join(available)}")
    return all_series, list(dict.fromkeys(requested)) if requested else available


def compare(run_dirs: list[str], requested: list[str] | None = None, out: str | None = None,
            plots_dir: str | None = None, examples_per_iteration: int = 3) -> dict:
    """Print the table; write the plots and the report when asked. Returns the paths written."""
    from selfplay.report.table import print_table

    if examples_per_iteration < 0:
        raise CompareError(f"--examples must be 0 or more, got {examples_per_iteration}")
    all_series, metrics = load_runs(run_dirs, requested)
    out_path = Path(out) if out else None
    if out_path is not None and (out_path.is_dir() or out_path.suffix.lower() not in (".html", ".htm")):
        raise CompareError(f"--out {out}: must be a file name ending in .html")
    plots_path = Path(plots_dir) if plots_dir else (default_plots_dir(out_path) if out_path else None)
    if plots_path is not None and plots_path.exists() and not plots_path.is_dir():
        raise CompareError(f"--plots {plots_path}: exists and is not a folder")
    try:  # every file the report shows, read (and hash-checked) before anything is printed or written
        examples = read_examples(all_series, examples_per_iteration) if out_path is not None else None
    except ArtifactDamaged as error:
        raise CompareError(str(error)) from None
    print_table(all_series, metrics)
    written = {}
    if plots_path is None:
        return written
    from selfplay.report.html import render_report
    from selfplay.report.plots import plot_metric, write_bytes_atomic, write_plots

    images = {metric: plot_metric(all_series, metric) for metric in metrics}
    try:
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
        written["plots"] = write_plots(images, plots_path)
        if out_path is not None:
            write_bytes_atomic(out_path, render_report(all_series, metrics, images, examples).encode("utf-8"))
            written["report"] = out_path
    except OSError as error:
        raise CompareError(f"{error.filename or out_path or plots_path}: cannot be written "
                           f"({error.strerror or error})") from None
    return written
