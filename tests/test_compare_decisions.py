"""The compare report's judgements on small hand-made numbers (selfplay/report/decide.py), and
the headline panel's marks, fork grouping and sparklines built from them (headline.py)."""

import re
from pathlib import Path

import pytest

from selfplay.report.decide import best_runs, clear_lead, excludes, intervals_apart, is_constant, iteration_ticks, judge_warnings
from selfplay.report.headline import headline_cells, lineage_order, render_headline, sparkline_svg
from selfplay.report.html import shown_path
from selfplay.report.read import RunSeries


# -- best per column ---------------------------------------------------------------------------------
def test_best_runs_takes_the_highest_and_keeps_ties():
    assert best_runs({"a": 0.6, "b": 0.7, "c": None}, higher_is_better=True) == {"b"}
    assert best_runs({"a": 0.7, "b": 0.7}, higher_is_better=True) == {"a", "b"}
    assert best_runs({"a": 3.0, "b": 2.0}, higher_is_better=False) == {"b"}


def test_no_best_without_a_direction_or_a_second_run():
    assert best_runs({"a": 1.0, "b": 2.0}, higher_is_better=None) == set()     # KL, length
    assert best_runs({"a": 1.0, "b": None}, higher_is_better=True) == set()


# -- differences the intervals allow ------------------------------------------------------------------
@pytest.mark.parametrize("a, b, apart", [
    ((0.6, 0.7), (0.4, 0.5), True),
    ((0.4, 0.5), (0.6, 0.7), True),
    ((0.5, 0.7), (0.4, 0.5), False),      # touching is overlap
    ((0.45, 0.7), (0.4, 0.5), False),
])
def test_intervals_apart(a, b, apart):
    assert intervals_apart(a, b) is apart


def test_a_lead_needs_every_other_interval_apart_and_known():
    assert clear_lead("a", {"a": (0.7, 0.8), "b": (0.5, 0.6), "c": (0.4, 0.69)})
    assert not clear_lead("a", {"a": (0.7, 0.8), "b": (0.5, 0.6), "c": (0.65, 0.75)})
    assert not clear_lead("a", {"a": (0.7, 0.8), "b": None})                   # b's noise is unknown
    assert not clear_lead("a", {"a": None, "b": (0.1, 0.2)})
    assert not clear_lead("a", {"a": (0.7, 0.8)})                               # nothing to lead


def test_excludes_says_whether_an_interval_lies_on_one_side():
    assert excludes((0.51, 0.7), 0.5) and excludes((0.2, 0.49), 0.5)
    assert not excludes((0.45, 0.6), 0.5) and not excludes(None, 0.5)


# -- constant metrics and ticks --------------------------------------------------------------------------
def test_is_constant():
    assert is_constant([1.0, 1.0, 1.0]) and is_constant([0.0]) and is_constant([24.0, 24.0 + 1e-12])
    assert not is_constant([0.0, 0.001]) and not is_constant([])


@pytest.mark.parametrize("last, ticks", [(0, [0]), (1, [0, 1]), (2, [0, 1, 2]), (10, list(range(11))),
                                         (12, [0, 2, 4, 6, 8, 10, 12]), (30, [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30])])
def test_iteration_ticks_are_integers_from_zero(last, ticks):
    assert iteration_ticks(last) == ticks


# -- judge warnings --------------------------------------------------------------------------------------
def test_judge_warnings_for_a_silent_judge_at_the_end_and_a_length_jump():
    assert judge_warnings({0: {"mean_response_tokens": 20.0}, 1: {"mean_response_tokens": 22.0,
                                                                   "no_signal_fraction": 0.1}}) == []
    silent = judge_warnings({1: {"no_signal_fraction": 0.9}, 2: {"no_signal_fraction": 0.6}})
    assert silent == ["silent judge: 60% of comparisons gave no signal at iteration 2"]
    assert judge_warnings({1: {"no_signal_fraction": 0.9}, 2: {"no_signal_fraction": 0.1}}) == []   # recovered
    jump = judge_warnings({0: {"mean_response_tokens": 20.0}, 1: {"mean_response_tokens": 21.0},
                           2: {"mean_response_tokens": 40.0}})
    assert jump == ["length jump: 21 -> 40 tokens from iteration 1 to 2 (a judge rewarding length?)"]


# -- the headline panel ---------------------------------------------------------------------------------
def _series(name, run_id, final: dict, intervals: dict | None = None, parent: str | None = None,
            method: str = "sppo", changes=()) -> RunSeries:
    pointer = {"run_dir": f"/runs/{parent}", "run_id": parent, "iteration": 2, "name": parent} if parent else None
    series = RunSeries(Path(f"/runs/{name}"), name, run_id, 2, pointer, list(changes), method=method)
    series.metrics = {1: {k: v * 0.9 for k, v in final.items()}, 2: dict(final)}
    series.intervals = {2: dict(intervals or {})}
    series.initial = {"win_rate_vs_initial": 0.5, "mean_response_tokens": 20.0}
    return series


def test_headline_marks_the_best_and_a_lead_only_where_the_intervals_allow():
    a = _series("a", "a1", {"win_rate_vs_initial": 0.8, "mean_response_tokens": 30.0},
                {"win_rate_vs_initial": (0.7, 0.9)})
    b = _series("b", "b1", {"win_rate_vs_initial": 0.6, "mean_response_tokens": 25.0},
                {"win_rate_vs_initial": (0.45, 0.72)})
    cells = headline_cells([a, b])
    assert cells[(a.label, "win_rate_vs_initial")].best and not cells[(b.label, "win_rate_vs_initial")].best
    assert not cells[(a.label, "win_rate_vs_initial")].lead              # 0.7 < 0.72: overlap
    assert cells[(a.label, "win_rate_vs_initial")].versus_even == "+"    # 0.7 > 0.5
    assert cells[(b.label, "win_rate_vs_initial")].versus_even == ""     # 0.45 < 0.5 < 0.72
    assert not any(cells[(s.label, "mean_response_tokens")].best for s in (a, b))   # length has no best
    b.intervals[2]["win_rate_vs_initial"] = (0.5, 0.69)
    assert headline_cells([a, b])[(a.label, "win_rate_vs_initial")].lead


def test_forks_follow_their_parent_and_a_missing_parent_is_a_top_row():
    root = _series("root", "r", {"win_rate_vs_initial": 0.6})
    other = _series("other", "o", {"win_rate_vs_initial": 0.6})
    fork = _series("fork", "f", {"win_rate_vs_initial": 0.7}, parent="r")
    fork_of_fork = _series("fork2", "ff", {"win_rate_vs_initial": 0.7}, parent="f")
    orphan = _series("orphan", "x", {"win_rate_vs_initial": 0.7}, parent="gone")
    order = lineage_order([fork_of_fork, other, fork, orphan, root])
    assert [(s.name, depth) for s, depth in order] == [("other", 0), ("orphan", 0), ("root", 0), ("fork", 1),
                                                        ("fork2", 2)]


def test_the_grid_has_a_sparkline_per_cell_and_groups_by_method():
    runs = [_series(f"r{i}", f"id{i}", {"win_rate_vs_initial": 0.5 + i / 10, "mean_response_tokens": 20.0 + i},
                    method="sppo" if i % 2 else "dpo") for i in range(4)]
    html = "\n".join(render_headline(runs))
    assert 'class="grid"' in html and html.count("<svg") == 8                  # 4 runs x 2 key metrics
    assert "<svg" not in "\n".join(render_headline(runs[:3]))                # 3 runs: the plain panel
    grouped = "\n".join(render_headline(runs[:2], by="method"))
    assert re.findall(r'data-method="(\w+)"', grouped) == ["dpo", "sppo"] and grouped.count("<svg") == 4


def test_a_sparkline_spans_its_box_from_iteration_0():
    """120 x 30 pixels, 3 of padding: x 3..117 for iterations 0..2, y 27 (0.5) .. 3 (0.8)."""
    svg = sparkline_svg([(0, 0.5), (1, 0.6), (2, 0.8)], [(1, 0.55, 0.65), (2, 0.6, 0.8)], 2, (0.5, 0.8), "#000")
    points = re.search(r'polyline points="([^"]+)"', svg).group(1).split()
    assert points == ["3.0,27.0", "60.0,19.0", "117.0,3.0"] and "<polygon" in svg


def test_shown_path_is_relative_to_the_current_folder(tmp_path):
    assert shown_path(tmp_path / "runs" / "base", tmp_path) == "runs/base"
    assert shown_path(tmp_path / "base", tmp_path / "reports") == "../base"
