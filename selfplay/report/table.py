"""The per-iteration table of `selfplay compare`: one row per metric and iteration, one column
per run. The terminal (rich) and the HTML report show the same cells, built here once.
"""

from selfplay.report.read import RunSeries

SHARED_MARK = "*"
SHARED_NOTE = f"{SHARED_MARK} the parent's iteration, shared by the fork"


def format_value(value: float) -> str:
    return f"{value:.4g}"


def cell(series: RunSeries, iteration: int, metric: str) -> str:
    """'0.6171 [0.5, 0.73]' (value, then the 95% interval when there is one), '-' when missing;
    a fork's shared iteration is marked."""
    value = series.metrics.get(iteration, {}).get(metric)
    if value is None:
        return "-"
    text = format_value(value)
    interval = series.intervals.get(iteration, {}).get(metric)
    if interval:
        text += f" [{format_value(interval[0])}, {format_value(interval[1])}]"
    return text + (SHARED_MARK if series.is_shared(iteration) else "")


def table_rows(all_series: list[RunSeries], metrics: list[str]) -> list[tuple[str, int, list[str]]]:
    """(metric, iteration, one cell per run) for every iteration any run has evaluated."""
    iterations = sorted({t for s in all_series for t in s.metrics})
    return [(metric, iteration, [cell(s, iteration, metric) for s in all_series])
            for metric in metrics for iteration in iterations]


def print_table(all_series: list[RunSeries], metrics: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from selfplay.console import printable

    table = Table(title="evaluation per iteration (value [95% interval])")
    table.add_column("metric")
    table.add_column("iter", justify="right")
    for series in all_series:
        table.add_column(Text(printable(series.label)), justify="right")  # Text: a "[run id]" is not markup
    rows = table_rows(all_series, metrics)
    for index, (metric, iteration, cells) in enumerate(rows):
        first = index == 0 or rows[index - 1][0] != metric
        last = index == len(rows) - 1 or rows[index + 1][0] != metric
        table.add_row(Text(printable(metric) if first else ""), str(iteration), *(Text(printable(c)) for c in cells),
                      end_section=last)
    console = Console(width=max(120, Console().width))
    console.print(table)
    notes = [f"{s.label}: {s.relation}" for s in all_series if s.relation]
    if any(s.parent for s in all_series):
        notes.append(SHARED_NOTE)
    for note in notes:
        console.print(printable(note), highlight=False, markup=False)
