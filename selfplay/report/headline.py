"""The report's headline panel: one row per run, one column per key metric (decide.KEY_METRICS)
at the run's last evaluated iteration, with its 95% interval, the best run per column marked,
and a warning when the judge looks silent or gamed.

With more than GRID_AFTER runs, or `--by method`, the panel is the run grid: each cell also
draws the metric's curve from iteration 0 as an inline SVG sparkline (one x and y scale per
column, so the rows compare), and with `--by method` the rows are grouped under their method.
Either way a fork's row follows its parent's, indented, with the recipe keys it changed.
"""

from dataclasses import dataclass
from html import escape

from selfplay.report.decide import KEY_METRICS, KeyMetric, best_runs, clear_lead, excludes, judge_warnings
from selfplay.report.plots import COLORS
from selfplay.report.read import RunSeries
from selfplay.report.table import format_value

GRID_AFTER = 3
SPARK_WIDTH, SPARK_HEIGHT, SPARK_PAD = 120, 30, 3
LEGEND = ("★ best run in the column (higher is better; KL and length have no best). "
          "▲ the best run's 95% interval lies apart from every other run's: a difference the intervals "
          "allow (claimed only from non-overlapping intervals, a conservative test). "
          "+ / − a win rate whose 95% interval lies above / below 0.5: it beats / loses to the policy it "
          "is measured against. ⚠ the judge may be silent (most comparisons without a signal) or gamed "
          "(a jump in length). Numbers are at each run's last evaluated iteration.")


@dataclass
class HeadlineCell:
    value: float
    interval: tuple[float, float] | None
    best: bool = False
    lead: bool = False            # best, with an interval apart from every other run's
    versus_even: str = ""         # "+" / "−": the interval above / below the opponent's 0.5


def shown_metrics(all_series: list[RunSeries]) -> list[KeyMetric]:
    """The key metrics any run has at its last evaluated iteration (judge agreement only with an evaluate.judge)."""
    return [metric for metric in KEY_METRICS
            if any(s.final_iteration and s.value(s.final_iteration, metric.name) is not None for s in all_series)]


def headline_cells(all_series: list[RunSeries]) -> dict[tuple[str, str], HeadlineCell]:
    """{(run label, metric): cell} at each run's last evaluated iteration, with the marks decided."""
    cells = {}
    for metric in shown_metrics(all_series):
        column = {}
        for series in all_series:
            final = series.final_iteration
            value = series.value(final, metric.name) if final else None
            if value is not None:
                column[series.label] = HeadlineCell(value, series.interval(final, metric.name))
        for label in best_runs({label: cell.value for label, cell in column.items()}, metric.higher_is_better):
            column[label].best = True
            column[label].lead = clear_lead(label, {other: cell.interval for other, cell in column.items()})
        if metric.even is not None:
            for cell in column.values():
                if excludes(cell.interval, metric.even):
                    cell.versus_even = "+" if cell.interval[0] > metric.even else "−"
        cells.update({(label, metric.name): cell for label, cell in column.items()})
    return cells


def lineage_order(all_series: list[RunSeries]) -> list[tuple[RunSeries, int]]:
    """(run, depth): each run followed by its forks among these runs (depth + 1), in the given
    order otherwise; a fork whose parent is not among them is a top-level row."""
    by_id = {s.run_id: s for s in all_series}
    children: dict[str, list[RunSeries]] = {}
    for series in all_series:
        parent_id = (series.parent or {}).get("run_id")
        if parent_id in by_id and parent_id != series.run_id:
            children.setdefault(parent_id, []).append(series)
    ordered, seen = [], set()

    def visit(series: RunSeries, depth: int) -> None:
        if series.run_id in seen:
            return
        seen.add(series.run_id)
        ordered.append((series, depth))
        for child in children.get(series.run_id, []):
            visit(child, depth + 1)

    for series in all_series:
        if not any(series in kids for kids in children.values()):
            visit(series, 0)
    for series in all_series:     # a cycle of parents (hand-edited run.json) still shows every run
        visit(series, 0)
    return ordered


def sparkline_svg(points: list[tuple[int, float]], bands: list[tuple[int, float, float]], x_last: int,
                  y_range: tuple[float, float], color: str) -> str:
    """A curve from iteration 0 to x_last in SPARK_WIDTH x SPARK_HEIGHT pixels, y_range bottom to
    top, the interval as a shaded band, the last point as a dot."""
    low, high = y_range
    span = (high - low) or 1.0

    def xy(t: float, v: float) -> str:
        x = SPARK_PAD + (SPARK_WIDTH - 2 * SPARK_PAD) * t / max(x_last, 1)
        y = SPARK_HEIGHT - SPARK_PAD - (SPARK_HEIGHT - 2 * SPARK_PAD) * (v - low) / span
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg class="spark" width="{SPARK_WIDTH}" height="{SPARK_HEIGHT}" viewBox="0 0 {SPARK_WIDTH} '
             f'{SPARK_HEIGHT}" role="img" data-points="{len(points)}">']
    if len(bands) > 1:
        outline = [xy(t, top) for t, _, top in bands] + [xy(t, bottom) for t, bottom, _ in reversed(bands)]
        parts.append(f'<polygon points="{" ".join(outline)}" fill="{color}" fill-opacity="0.15"/>')
    parts.append(f'<polyline points="{" ".join(xy(t, v) for t, v in points)}" fill="none" stroke="{color}" '
                 f'stroke-width="1.5"/>')
    if points:
        x, y = xy(*points[-1]).split(",")
        parts.append(f'<circle cx="{x}" cy="{y}" r="2.2" fill="{color}"/>')
    return "".join(parts) + "</svg>"


def _sparkline(series: RunSeries, metric: str, x_last: int, y_range: tuple[float, float], color: str) -> str:
    iterations = series.iterations_of(metric)
    bands = [(t, *series.interval(t, metric)) for t in iterations if series.interval(t, metric)]
    return sparkline_svg([(t, series.value(t, metric)) for t in iterations], bands, x_last, y_range, color)


def _column_range(all_series: list[RunSeries], metric: str) -> tuple[float, float]:
    numbers = [number for s in all_series for t in s.iterations_of(metric)
               for number in (s.value(t, metric), *(s.interval(t, metric) or ()))]
    return min(numbers), max(numbers)


def _cell_html(series: RunSeries, metric: KeyMetric, cell: HeadlineCell | None, spark: str) -> str:
    if cell is None:
        return f'<td class="num" data-headline-run="{escape(series.label)}" data-headline-metric="{metric.name}">-</td>'
    interval = (f'<span class="ci">[{format_value(cell.interval[0])}, {format_value(cell.interval[1])}]</span>'
                if cell.interval else "")
    marks = ("★" if cell.best else "") + ("▲" if cell.lead else "") + cell.versus_even
    css = "num best" if cell.best else "num"
    return (f'<td class="{css}" data-headline-run="{escape(series.label)}" data-headline-metric="{metric.name}" '
            f'data-value="{cell.value!r}"><span class="value">{format_value(cell.value)}</span>'
            f'{f" <b class=mark>{marks}</b>" if marks else ""}{interval}{spark}</td>')


def _run_cell(series: RunSeries, depth: int, index: int) -> str:
    swatch = f'<span class="swatch" style="background:{COLORS[index % len(COLORS)]}"></span>'
    indent = f'<span class="indent">{"&nbsp;" * 3 * depth}↳ </span>' if depth else ""
    detail = ""
    if series.parent:
        detail = (f'<div class="note">{escape(series.fork_point)}</div>'
                  + (f'<div class="note change">{escape("; ".join(series.changes))}</div>' if series.changes else ""))
    return f'<td class="run" data-depth="{depth}">{indent}{swatch}{escape(series.label)}{detail}</td>'


def render_headline(all_series: list[RunSeries], by: str = "run") -> list[str]:
    """The headline panel (the run grid with over GRID_AFTER runs or by="method")."""
    grid = len(all_series) > GRID_AFTER or by == "method"
    metrics, cells = shown_metrics(all_series), headline_cells(all_series)
    colors = {s.run_id: COLORS[i % len(COLORS)] for i, s in enumerate(all_series)}
    index = {s.run_id: i for i, s in enumerate(all_series)}
    x_last = max((s.final_iteration or 0 for s in all_series), default=0)
    ranges = {m.name: _column_range(all_series, m.name) for m in metrics} if grid else {}
    groups = ([(method, [s for s in all_series if s.method == method])
               for method in dict.fromkeys(s.method for s in all_series)] if by == "method" else [(None, all_series)])
    lines = ["<h2>Headline</h2>" if not grid else "<h2>Runs at a glance</h2>",
             f'<table id="headline" class="{"grid" if grid else "panel"}">',
             "<tr><th>run</th><th>iteration</th>" + "".join(f"<th>{escape(m.title)}</th>" for m in metrics)
             + "<th>judge</th></tr>"]
    for method, members in groups:
        if method is not None:
            lines.append(f'<tr class="group"><th colspan="{len(metrics) + 3}" data-method="{escape(method)}">'
                         f"method: {escape(method or 'unknown')}</th></tr>")
        for series, depth in lineage_order(members):
            row = [_run_cell(series, depth, index[series.run_id]),
                   f'<td class="num">{series.final_iteration or "-"} of {series.planned_iterations}</td>']
            for metric in metrics:
                spark = (_sparkline(series, metric.name, x_last, ranges[metric.name], colors[series.run_id])
                         if grid and series.iterations_of(metric.name) else "")
                row.append(_cell_html(series, metric, cells.get((series.label, metric.name)), spark))
            by_iteration = {t: {m: series.value(t, m) for m in ("no_signal_fraction", "mean_response_tokens")
                                if series.value(t, m) is not None} for t in [0, *sorted(series.metrics)]}
            warnings = judge_warnings(by_iteration)
            row.append(f'<td class="warn" data-warnings="{len(warnings)}">'
                       + ("".join(f"<div>⚠ {escape(w)}</div>" for w in warnings) or "ok") + "</td>")
            lines.append(f'<tr data-run="{escape(series.label)}">{"".join(row)}</tr>')
    return lines + ["</table>", f'<p class="note legend">{escape(LEGEND)}</p>']
