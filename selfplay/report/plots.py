"""One PNG per metric against the iteration, one line per run, with the 95% band where the
evaluate stage recorded an interval. The axis starts at iteration 0, the initial policy, where
the metric has a value there (read.py), and has integer ticks only (decide.iteration_ticks).

A fork's shared iterations (the parent's, before the fork) are drawn dashed in the fork's
colour, and its own line starts from the last shared value, so the curve visibly leaves the
parent's at the fork point. Matplotlib's object API (no pyplot) keeps this free of global
state and of any display.
"""

import io
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from selfplay.report.decide import iteration_ticks
from selfplay.report.read import RunSeries

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
          "#bcbd22"]


@dataclass
class Plot:
    """One metric's PNG and the iteration ticks drawn on its x axis."""

    png: bytes
    xticks: list[int]


def _values(series: RunSeries, metric: str, iterations: list[int]) -> list[float]:
    return [series.value(t, metric) for t in iterations]


def _draw_run(axes, series: RunSeries, metric: str, color: str, parent_shown: bool = False) -> None:
    """One run's line (and band). With its parent in the same plot, a fork's shared part is
    drawn under the parent's line and gets no band of its own (the parent's is the same)."""
    iterations = series.iterations_of(metric)
    if not iterations:
        return  # no legend entry for a run without this metric
    label = series.label + (f" (fork at iteration {series.first_own_iteration})" if series.parent else "")
    shared = [t for t in iterations if series.is_shared(t)]
    own = [t for t in iterations if not series.is_shared(t)]
    if shared:
        axes.plot(shared, _values(series, metric, shared), color=color, linestyle="--", marker="o",
                  markerfacecolor="white", alpha=0.8, label=None if own else label, zorder=1.5)
    if own:
        joined = shared[-1:] + own  # the fork's own line leaves from the parent's last shared value
        axes.plot(joined, _values(series, metric, joined), color=color, marker="o", label=label)
        if shared:
            axes.plot(shared[-1:], _values(series, metric, shared[-1:]), color=color, marker="o",
                      markerfacecolor="white")
    banded = [t for t in (shared[-1:] + own if parent_shown else iterations)
              if series.interval(t, metric)]
    if not banded:
        return
    low = [series.interval(t, metric)[0] for t in banded]
    high = [series.interval(t, metric)[1] for t in banded]
    axes.fill_between(banded, low, high, color=color, alpha=0.15, linewidth=0)
    if len(banded) == 1:  # a band of one point has no width: show it as an error bar
        value = series.value(banded[0], metric)
        axes.errorbar(banded, [value], yerr=[[value - low[0]], [high[0] - value]], color=color, capsize=4)


def plot_metric(all_series: list[RunSeries], metric: str, size: tuple[float, float] = (5.2, 3.2)) -> Plot:
    """One metric's plot, `size` inches at 100 dpi."""
    figure = Figure(figsize=size, dpi=100, layout="constrained")
    axes = figure.subplots()
    shown = {s.run_id for s in all_series}
    for index, series in enumerate(all_series):
        parent_shown = bool(series.parent) and series.parent.get("run_id") in shown
        _draw_run(axes, series, metric, COLORS[index % len(COLORS)], parent_shown)
    axes.set_title(metric)
    axes.set_xlabel("iteration")
    last = max((t for s in all_series for t in s.iterations_of(metric)), default=0)
    axes.set_xticks(iteration_ticks(last))
    axes.set_xlim(-0.25, max(last, 1) + 0.25)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Plot(buffer.getvalue(), [int(t) for t in axes.get_xticks()])


def plot_file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", metric) + ".png"


PLOTS_INDEX = ".selfplay-plots.json"  # the PNGs the last compare wrote into the folder


def write_plots(images: dict[str, bytes], folder: Path) -> dict[str, Path]:
    """Write {metric: PNG bytes} as folder/<metric>.png, each to a temporary name first and
    renamed into place (a reader never sees half a PNG). The PNGs an earlier compare wrote there
    (PLOTS_INDEX) and this one does not are removed, or a reused folder shows stale curves of
    metrics no longer compared; other files in the folder are left."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / PLOTS_INDEX
    try:
        earlier = json.loads(index.read_text())
    except (OSError, ValueError):
        earlier = []
    paths = {}
    for metric, png in images.items():
        paths[metric] = folder / plot_file_name(metric)
        write_bytes_atomic(paths[metric], png)
    written = sorted(path.name for path in paths.values())
    write_bytes_atomic(index, json.dumps(written).encode())
    for name in earlier if isinstance(earlier, list) else []:
        if isinstance(name, str) and name not in written and name == Path(name).name and name.endswith(".png"):
            (folder / name).unlink(missing_ok=True)
    return paths


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
