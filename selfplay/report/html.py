"""The HTML report of `selfplay compare`: one self-contained file (plots inlined as base64 PNG
data URIs, sparklines as inline SVG, inline CSS, no external requests), in the order a reader
asks: the headline panel (headline.py), the key curves from iteration 0, the per-iteration
table of every metric (a constant one as a single row), the other metrics' plots (collapsed),
the runs' folders (relative to the current folder) and example generations side by side.

Every text from a run (names, paths, prompts, generations) is HTML-escaped. A few lines of
inline script set `data-plots` on <body> to "loaded" once every image decoded, so a headless
browser can check the plots without a screenshot diff.
"""

import base64
import os
import time
from html import escape
from pathlib import Path

from selfplay.report.decide import KEY_NAMES
from selfplay.report.headline import render_headline
from selfplay.report.plots import COLORS, Plot
from selfplay.report.read import Example, RunSeries
from selfplay.report.table import SHARED_NOTE, cell, table_rows

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta, .note { color: #666; font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.shared { color: #777; font-style: italic; }
tr.first-of-metric td { border-top: 2px solid #bbb; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #eee; padding: 4px; flex: 0 1 430px; }
.key figure { flex-basis: 440px; } .small figure { flex-basis: 320px; }
#headline td.num span.ci { display: block; color: #777; font-size: 11px; }
td.best { background: #eef6ee; } b.mark { color: #1a7f37; font-weight: 600; }
td.warn div { color: #b35900; } td.run .indent { color: #999; }
svg.spark { display: block; margin-top: 2px; } tr.group th { background: #e8eef7; }
tr.constant td { color: #666; }
figure img { display: block; width: 100%; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: 12px/1.4 ui-monospace, monospace; }
.example { margin: 10px 0 18px; }
.example pre.prompt { background: #f7f7f7; padding: 6px; margin-bottom: 6px; }
.side { table-layout: fixed; width: 100%; }
details > summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
"""

READY_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) if (images[i].complete && images[i].naturalWidth > 0) loaded++;
  var state = loaded === images.length ? "loaded" : "broken " + loaded + "/" + images.length;
  document.body.setAttribute("data-plots", state);
});
"""


def _run_name(series: RunSeries, index: int) -> str:
    return (f'<span class="swatch" style="background:{COLORS[index % len(COLORS)]}"></span>'
            f"{escape(series.label)}")


def shown_path(path: Path, cwd: Path) -> str:
    """A run's folder as the report shows it: relative to the folder compare ran in (never the
    machine's absolute path), or its name alone when it is on another drive."""
    try:
        return os.path.relpath(Path(path).absolute(), Path(cwd).absolute())
    except ValueError:
        return Path(path).name


def _runs_section(all_series: list[RunSeries]) -> list[str]:
    lines = ['<h2>Runs</h2>', '<table id="runs">',
             "<tr><th>run</th><th>directory</th><th>evaluated iterations</th><th>relation</th></tr>"]
    for index, series in enumerate(all_series):
        evaluated = ", ".join(map(str, sorted(series.metrics))) or "none yet"
        folder = shown_path(series.run_dir, Path.cwd())
        lines.append(f"<tr><td>{_run_name(series, index)}</td><td>{escape(folder)}</td>"
                     f"<td>{evaluated} (of {series.planned_iterations})</td>"
                     f"<td>{escape(series.relation or 'root run')}</td></tr>")
    return lines + ["</table>"]


PLOT_NOTE = ("iteration 0 is the initial policy (win rates 0.5 and KL 0 by definition, length of its samples); "
             "shaded: 95% interval where the evaluation recorded one; dashed: a fork's shared iterations "
             "(its parent's)")


def _figures(plots: dict[str, Plot]) -> list[str]:
    lines = []
    for metric, plot in plots.items():
        data = base64.b64encode(plot.png).decode("ascii")
        ticks = " ".join(map(str, plot.xticks))
        lines.append(f'<figure><img alt="{escape(metric)}" data-metric="{escape(metric)}" data-xticks="{ticks}" '
                     f'src="data:image/png;base64,{data}"></figure>')
    return lines


def _plots_sections(plots: dict[str, Plot]) -> list[str]:
    key = {metric: plots[metric] for metric in KEY_NAMES if metric in plots}     # in the headline's order
    other = {metric: plot for metric, plot in plots.items() if metric not in KEY_NAMES}
    lines = ["<h2>Key curves</h2>", '<div class="plots key" id="key-curves">', *_figures(key), "</div>",
             f'<p class="note">{escape(PLOT_NOTE)}</p>']
    if other:
        lines += [f'<details id="more-plots"><summary>the other {len(other)} metrics, one plot each</summary>',
                  '<div class="plots small">', *_figures(other), "</div></details>"]
    return lines


def _constant_rows(all_series: list[RunSeries], constant: list[str]) -> list[str]:
    """One row per constant metric: its value in every run, for all iterations."""
    rows = []
    for metric in constant:
        cells = []
        for series in all_series:
            text = next((cell(series, t, metric).rstrip("*") for t in sorted(series.metrics)
                         if series.value(t, metric) is not None), "-")
            cells.append(f'<td class="num" data-run="{escape(series.label)}" data-metric="{escape(metric)}" '
                         f'data-iteration="all">{escape(text)}</td>')
        rows.append(f'<tr class="constant first-of-metric"><td>{escape(metric)}</td><td class="num">all</td>'
                    f'{"".join(cells)}</tr>')
    return rows


def _metrics_section(all_series: list[RunSeries], metrics: list[str], constant: list[str]) -> list[str]:
    lines = ["<h2>Per-iteration metrics</h2>", '<table id="metrics">',
             "<tr><th>metric</th><th>iteration</th>"
             + "".join(f"<th>{_run_name(s, i)}</th>" for i, s in enumerate(all_series)) + "</tr>"]
    previous = None
    varying = [metric for metric in metrics if metric not in constant]
    for metric, iteration, cells in table_rows(all_series, varying):
        first = metric != previous
        previous = metric
        row = [f'<td>{escape(metric) if first else ""}</td><td class="num">{iteration}</td>']
        for series, text in zip(all_series, cells):
            css = "num shared" if series.is_shared(iteration) else "num"
            row.append(f'<td class="{css}" data-run="{escape(series.label)}" data-metric="{escape(metric)}" '
                       f'data-iteration="{iteration}">{escape(text)}</td>')
        lines.append(f'<tr{" class=first-of-metric" if first else ""}>{"".join(row)}</tr>')
    lines += _constant_rows(all_series, constant) + ["</table>"]
    notes = [f"{SHARED_NOTE}."] if any(s.parent for s in all_series) else []
    if constant:
        notes.append("iteration 'all': a metric with one value in every run and iteration (no plot).")
    if notes:
        lines.append(f'<p class="note">{escape(" ".join(notes))}</p>')
    return lines


def _example_block(example: Example, all_series: list[RunSeries]) -> list[str]:
    columns = [(escape(label), text, "") for label, text in example.initial.items()]
    for index, series in enumerate(all_series):
        rate = example.prompt_win_rates.get(series.label)
        note = "" if rate is None else f'<p class="note">judge: win rate vs initial on this prompt {rate:.3g}</p>'
        if series.label in example.rationales:
            note += f'<p class="note rationale">judge\'s rationale: {escape(example.rationales[series.label])}</p>'
        columns.append((_run_name(series, index), example.responses.get(series.label), note))
    header = "".join(f"<th>{label}</th>" for label, _, _ in columns)
    body = "".join(f"<td><pre>{escape(text) if text is not None else '-'}</pre>{note}</td>"
                   for _, text, note in columns)
    return ['<div class="example">', f"<b>prompt {example.prompt_id}</b>",
            f'<pre class="prompt">{escape(example.prompt)}</pre>',
            f'<table class="side"><tr>{header}</tr><tr>{body}</tr></table>', "</div>"]


def _examples_section(examples: list[Example], all_series: list[RunSeries]) -> list[str]:
    lines = ["<h2>Example generations</h2>",
             '<p class="note">the first sample of each run for the same eval prompt and iteration</p>']
    iterations = sorted({e.iteration for e in examples})
    for iteration in iterations:
        is_last = iteration == iterations[-1]
        lines.append(f'<details{" open" if is_last else ""} data-iteration="{iteration}">'
                     f"<summary>iteration {iteration}</summary>")
        for example in (e for e in examples if e.iteration == iteration):
            lines += _example_block(example, all_series)
        lines.append("</details>")
    if not examples:
        lines.append("<p>none (no evaluation samples, or --examples 0)</p>")
    return lines


def render_report(all_series: list[RunSeries], metrics: list[str], constant: list[str], plots: dict[str, Plot],
                  examples: list[Example], by: str = "run") -> str:
    """The whole report as one HTML string."""
    names = ", ".join(s.label for s in all_series)
    lines = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>selfplay compare: {escape(names)}</title>", f"<style>{STYLE}</style></head>",
             '<body data-plots="pending">', "<h1>selfplay compare</h1>",
             f'<p class="meta">{escape(names)} &middot; written {time.strftime("%Y-%m-%d %H:%M:%S")}</p>']
    lines += render_headline(all_series, by)
    lines += _plots_sections(plots)
    lines += _metrics_section(all_series, metrics, constant)
    lines += _runs_section(all_series)
    lines += _examples_section(examples, all_series)
    lines += [f"<script>{READY_SCRIPT}</script>", "</body></html>"]
    return "\n".join(lines) + "\n"
