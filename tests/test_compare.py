"""`selfplay compare` on hand-built run directories: the metric and interval shapes it reads,
the table's numbers, the PNGs, the HTML report (numbers, escaped texts, nothing external), a
fork drawn from its parent's shared values, and bad input as one line with exit 2."""

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from selfplay.cli import main
from selfplay.report.compare import CompareError, load_runs
from selfplay.report.plots import _draw_run
from selfplay.report.read import read_examples, read_series, split_metrics
from selfplay.report.table import table_rows

from compare_helpers import png_size, read_report

DONE = {"status": "done", "inputs": {}, "config_digest": "c", "outputs": {}, "output_files": {}}
NASTY = 'if a < b && c > "d" then <script>alert(1)</script>'


def _stage(run_dir: Path, iteration: int, name: str, files: dict, outputs: dict | None = None) -> Path:
    path = run_dir / f"iter-{iteration:03d}" / name
    path.mkdir(parents=True)
    for file_name, write in files.items():
        write(path / file_name)
    (path / "manifest.json").write_text(json.dumps({**DONE, "outputs": outputs or {}}))
    return path


def _samples(texts: dict[int, str]):
    rows = [{"prompt_id": pid, "prompt": f"prompt {pid}: {NASTY}" if pid == 0 else f"prompt {pid}",
             "sample_idx": idx, "text": f"{text} (sample {idx})"} for pid, text in texts.items() for idx in (1, 0)]
    return lambda path: pq.write_table(pa.Table.from_pylist(rows), path)


def make_run(root: Path, name: str, run_id: str, metrics: dict[int, dict], beta: float = 0.02,
             parent: dict | None = None, iterations: int = 3) -> Path:
    """A run directory as the driver leaves it, with only what compare reads."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    recipe = {"name": name, "iterations": iterations, "train": {"beta": beta}, "tracking": {"group": None}}
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_id, "name": name, "recipe": recipe,
                                                  "recipe_digest": "d", "parent": parent}))
    _stage(run_dir, 0, "baseline", {"samples.parquet": _samples({0: "initial says hi", 1: "initial 1"})},
           {"samples.parquet": "baseline-digest"})
    for iteration, values in metrics.items():
        _stage(run_dir, iteration, "eval-gen",
               {"samples.parquet": _samples({0: f"{name} iter {iteration} <b>bold</b> & co", 1: f"{name} one"})})
        _stage(run_dir, iteration, "evaluate", {
            "metrics.json": lambda path, v=values: path.write_text(json.dumps(v)),
            "eval.parquet": lambda path: pq.write_table(pa.Table.from_pylist(
                [{"prompt_id": 0, "win_rate": 0.75}, {"prompt_id": 1, "win_rate": 0.25}]), path)})
    return run_dir


PARENT_METRICS = {
    1: {"win_rate_vs_initial": 0.61, "win_rate_vs_initial_ci_low": 0.5, "win_rate_vs_initial_ci_high": 0.72,
        "mean_response_tokens": 23.7, "judge_temperature": None},
    2: {"win_rate_vs_initial": 0.8065, "win_rate_vs_initial_ci_low": 0.7, "win_rate_vs_initial_ci_high": 0.9,
        "mean_response_tokens": 24.25, "judge_temperature": None},
}
FORK_OWN = {3: {"win_rate_vs_initial": 0.9, "win_rate_vs_initial_ci_low": 0.85, "win_rate_vs_initial_ci_high": 0.95,
                "mean_response_tokens": 31.5}}


@pytest.fixture
def two_runs(tmp_path):
    """A parent with iterations 1-2 and a fork from iteration 3 with another beta, whose shared
    iterations are its own copies of the parent's (as create_fork leaves them)."""
    parent = make_run(tmp_path, "base", "aaaaaa111111", PARENT_METRICS)
    pointer = {"run_dir": str(parent.resolve()), "run_id": "aaaaaa111111", "iteration": 3,
               "shared_iterations": [1, 2]}
    fork = make_run(tmp_path, "base-fork-3", "bbbbbb222222", {**PARENT_METRICS, **FORK_OWN}, beta=0.05,
                    parent=pointer)
    return parent, fork


# -- metric and interval shapes ------------------------------------------------------------------
def test_split_metrics_reads_every_interval_shape_and_drops_non_numbers():
    values, intervals = split_metrics({
        "a": 0.5, "a_ci_low": 0.4, "a_ci_high": 0.6,                   # flat bounds
        "b": {"value": 0.7, "ci_low": 0.65, "ci_high": 0.8},         # nested value with bounds
        "c": {"mean": 2.0, "ci": [1.5, 2.5], "p90": 3},                # nested mean with a pair, and more
        "d": 3.0, "d_ci": [2.0, 4.0],                                  # flat pair
        "e": 1.0, "ci": {"e": {"low": 0.9, "high": 1.1}},              # a table of intervals
        "length_quantiles": {"p50": 20, "p90": 31},                    # nested numbers become metrics
        "temperature": None, "flag": True, "nan": float("nan"), "label": "x",
        "lonely_ci_low": 0.1, "lonely_ci_high": 0.2,                   # bounds without their metric stay metrics
    })
    assert values == {"a": 0.5, "b": 0.7, "c": 2.0, "c.p90": 3.0, "d": 3.0, "e": 1.0, "length_quantiles.p50": 20.0,
                      "length_quantiles.p90": 31.0, "lonely_ci_low": 0.1, "lonely_ci_high": 0.2}
    assert intervals == {"a": (0.4, 0.6), "b": (0.65, 0.8), "c": (1.5, 2.5), "d": (2.0, 4.0), "e": (0.9, 1.1)}


# -- the table ---------------------------------------------------------------------------------------
def test_table_holds_each_runs_numbers_with_intervals_and_marks_shared_iterations(two_runs):
    parent, fork = two_runs
    all_series, metrics = load_runs([str(parent), str(fork)], None)
    assert metrics == ["win_rate_vs_initial", "mean_response_tokens"]   # None-valued judge_temperature dropped
    rows = {(metric, iteration): cells for metric, iteration, cells in table_rows(all_series, metrics)}
    assert rows[("win_rate_vs_initial", 1)] == ["0.61 [0.5, 0.72]", "0.61 [0.5, 0.72]*"]
    assert rows[("win_rate_vs_initial", 2)] == ["0.8065 [0.7, 0.9]", "0.8065 [0.7, 0.9]*"]
    assert rows[("win_rate_vs_initial", 3)] == ["-", "0.9 [0.85, 0.95]"]
    assert rows[("mean_response_tokens", 3)] == ["-", "31.5"]
    assert all_series[1].relation == "fork of base [aaaaaa] at iteration 3 (train.beta: 0.02 -> 0.05)"
    assert all_series[0].relation is None


def test_a_fork_without_its_own_shared_folders_reads_them_from_the_parent(two_runs):
    parent, fork = two_runs
    for iteration in (1, 2):  # forks made before hard-linked sharing had no own folders
        for stage in ("evaluate", "eval-gen"):
            (fork / f"iter-{iteration:03d}" / stage / "manifest.json").unlink()
    series = read_series(fork)
    assert sorted(series.metrics) == [1, 2, 3]
    assert series.metrics[1]["win_rate_vs_initial"] == 0.61


def test_unfinished_stages_do_not_count(two_runs):
    parent, _ = two_runs
    manifest = parent / "iter-002" / "evaluate" / "manifest.json"
    manifest.write_text(json.dumps({**DONE, "status": "running"}))
    assert sorted(read_series(parent).metrics) == [1]


# -- plots -------------------------------------------------------------------------------------------
def _axes_for(series, metric):
    axes = Figure().subplots()
    _draw_run(axes, series, metric, "#1f77b4")
    return axes


def test_a_band_only_where_the_metric_has_an_interval(two_runs):
    _, fork = two_runs
    series = read_series(fork)
    assert sum(isinstance(c, PolyCollection) for c in _axes_for(series, "win_rate_vs_initial").collections) == 1
    assert not any(isinstance(c, PolyCollection) for c in _axes_for(series, "mean_response_tokens").collections)


def test_a_forks_own_line_leaves_from_the_parents_last_shared_value(two_runs):
    _, fork = two_runs
    lines = _axes_for(read_series(fork), "win_rate_vs_initial").lines
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    solid = [line for line in lines if line.get_linestyle() == "-" and len(line.get_xdata()) > 1]
    assert [list(line.get_xdata()) for line in dashed] == [[0, 1, 2]]   # from the initial policy
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in solid] == [([2, 3], [0.8065, 0.9])]


# -- examples ------------------------------------------------------------------------------------------
def test_examples_put_the_runs_first_samples_side_by_side_per_prompt_and_iteration(two_runs):
    parent, fork = two_runs
    all_series, _ = load_runs([str(parent), str(fork)], None)
    examples = read_examples(all_series, per_iteration=1)
    assert [(e.iteration, e.prompt_id) for e in examples] == [(1, 0), (2, 0), (3, 0)]
    last = examples[-1]
    assert last.initial == {"initial policy": "initial says hi (sample 0)"}   # shared baseline shown once
    assert last.responses == {"base [aaaaaa]": None,
                              "base-fork-3 [bbbbbb]": "base-fork-3 iter 3 <b>bold</b> & co (sample 0)"}
    assert last.prompt_win_rates == {"base-fork-3 [bbbbbb]": 0.75}


def test_examples_for_the_chosen_iterations_only(two_runs, tmp_path):
    parent, fork = two_runs
    out = tmp_path / "r.html"
    assert main(["compare", str(parent), str(fork), "--out", str(out), "--example-iterations", "1", "3"]) == 0
    assert re.findall(r'<details( open)? data-iteration="(\d+)"', out.read_text()) == [("", "1"), (" open", "3")]


def test_examples_show_the_judges_rationale_when_eval_parquet_has_one(two_runs, tmp_path):
    parent, fork = two_runs
    pq.write_table(pa.Table.from_pylist([{"prompt_id": 0, "win_rate": 1.0, "rationale": "more e's <i>here</i>"},
                                         {"prompt_id": 1, "win_rate": 0.0, "rationale": None}]),
                   fork / "iter-003/evaluate/eval.parquet")
    all_series, _ = load_runs([str(parent), str(fork)], None)
    last = read_examples(all_series, per_iteration=2)[-2:]
    assert [e.rationales for e in last] == [{"base-fork-3 [bbbbbb]": "more e's <i>here</i>"}, {}]
    out = tmp_path / "r.html"
    assert main(["compare", str(parent), str(fork), "--out", str(out)]) == 0
    assert "judge's rationale: more e&#x27;s &lt;i&gt;here&lt;/i&gt;" in out.read_text()


# -- the command -----------------------------------------------------------------------------------
def test_compare_writes_pngs_and_a_self_contained_report(two_runs, tmp_path, capsys):
    parent, fork = two_runs
    out = tmp_path / "out" / "report.html"
    assert main(["compare", str(parent), str(fork), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0.8065 [0.7, 0.9]*" in printed and "fork of base [aaaaaa] at iteration 3" in printed

    plots = sorted((tmp_path / "out" / "report-plots").glob("*.png"))
    assert [p.name for p in plots] == ["mean_response_tokens.png", "win_rate_vs_initial.png"]
    for path in plots:
        width, height = png_size(path)
        assert width >= 400 and height >= 250 and path.stat().st_size > 10_000

    html = out.read_text()
    report = read_report(html)
    assert report.cells[("base [aaaaaa]", "win_rate_vs_initial", 2)] == "0.8065 [0.7, 0.9]"
    assert report.cells[("base-fork-3 [bbbbbb]", "win_rate_vs_initial", 3)] == "0.9 [0.85, 0.95]"
    assert report.cells[("base-fork-3 [bbbbbb]", "mean_response_tokens", 3)] == "31.5"
    assert report.cells[("base [aaaaaa]", "mean_response_tokens", 3)] == "-"
    assert [img["data-metric"] for img in report.images] == ["win_rate_vs_initial", "mean_response_tokens"]
    assert all(img["src"].startswith("data:image/png;base64,") for img in report.images)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)   # nothing loaded from elsewhere
    assert "fork of base [aaaaaa] at iteration 3 (train.beta: 0.02 -&gt; 0.05)" in html
    # texts from the runs are escaped: no tag of theirs reaches the page
    assert NASTY not in html and "<b>bold</b>" not in html and html.count("<script>") == 1
    assert "if a &lt; b &amp;&amp; c &gt; &quot;d&quot; then &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "base-fork-3 iter 3 &lt;b&gt;bold&lt;/b&gt; &amp; co (sample 0)" in html


def test_a_constant_metric_is_one_table_row_and_no_plot(tmp_path):
    metrics = {t: {**values, "distinct_2": 1.0, "kl_vs_initial": 0.0} for t, values in PARENT_METRICS.items()}
    run_dir = make_run(tmp_path, "flat", "dddddd444444", metrics)
    out = tmp_path / "r.html"
    assert main(["compare", str(run_dir), "--out", str(out)]) == 0
    report = read_report(out.read_text())
    assert report.cells[("flat [dddddd]", "distinct_2", "all")] == "1"
    assert ("flat [dddddd]", "distinct_2", 1) not in report.cells
    plotted = {img["data-metric"] for img in report.images}
    assert "distinct_2" not in plotted and not (tmp_path / "r-plots" / "distinct_2.png").exists()
    assert "kl_vs_initial" in plotted                       # a key metric keeps its curve, constant or not
    assert {img["data-xticks"] for img in report.images} == {"0 1 2"}


def test_only_constant_metrics_give_no_plot_and_say_so(tmp_path, capsys):
    """--metric of a metric that never changes: no PNG, and one line saying why (it was a
    StopIteration traceback)."""
    metrics = {t: {**values, "distinct_2": 1.0} for t, values in PARENT_METRICS.items()}
    run_dir = make_run(tmp_path, "flat", "dddddd444444", metrics)
    assert main(["compare", str(run_dir), "--metric", "distinct_2", "--plots", str(tmp_path / "p")]) == 0
    assert "plots: none (every compared metric is the same at every iteration" in capsys.readouterr().out
    assert not list((tmp_path / "p").glob("*.png"))


def test_metric_option_limits_table_and_plots(two_runs, tmp_path, capsys):
    parent, fork = two_runs
    out = tmp_path / "r.html"
    assert main(["compare", str(parent), str(fork), "--metric", "mean_response_tokens", "--out", str(out)]) == 0
    assert "win_rate_vs_initial" not in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "r-plots").glob("*.png")] == ["mean_response_tokens.png"]
    assert {key[1] for key in read_report(out.read_text()).cells} == {"mean_response_tokens"}


def test_a_reused_plots_folder_keeps_no_stale_curve_and_leaves_other_files(two_runs, tmp_path):
    """A second compare into the same folder with fewer metrics removes the PNGs the first one
    wrote and the second did not; a file of the user's own there stays."""
    parent, fork = two_runs
    out = tmp_path / "r.html"
    assert main(["compare", str(parent), str(fork), "--out", str(out)]) == 0
    folder = tmp_path / "r-plots"
    first = {p.name for p in folder.glob("*.png")}
    assert {"win_rate_vs_initial.png", "mean_response_tokens.png"} <= first
    (folder / "mine.png").write_bytes(b"not ours")
    assert main(["compare", str(parent), str(fork), "--metric", "mean_response_tokens", "--out", str(out)]) == 0
    assert {p.name for p in folder.glob("*.png")} == {"mean_response_tokens.png", "mine.png"}


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nowhere"], "not a selfplay run directory"),
    (["{parent}", "--metric", "win_rate", "--out", "{tmp}/r.html"],
     "unknown --metric 'win_rate': the runs have win_rate_vs_initial, mean_response_tokens"),
    (["{parent}", "--out", "{tmp}"], "must be a file name ending in .html"),
    (["{parent}", "--examples", "-1"], "--examples must be 0 or more"),
    (["{parent}", "--example-iterations", "5"], "--example-iterations 5: not an evaluated iteration (the runs have 1, 2)"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(two_runs, tmp_path, capsys, args, message):
    parent, _ = two_runs
    before = sorted(tmp_path.rglob("*"))
    argv = ["compare"] + [a.format(tmp=tmp_path, parent=parent) for a in args]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and captured.err.count("\n") == 1
    assert sorted(tmp_path.rglob("*")) == before


def test_a_run_with_nothing_evaluated_yet_is_said_so(tmp_path, capsys):
    run_dir = make_run(tmp_path, "fresh", "cccccc333333", {})
    assert main(["compare", str(run_dir)]) == 2
    assert "no finished evaluate stage" in capsys.readouterr().err


def test_load_runs_counts_a_directory_given_twice_once(two_runs):
    parent, _ = two_runs
    all_series, _ = load_runs([str(parent), str(parent) + "/"], None)
    assert len(all_series) == 1
    with pytest.raises(CompareError):
        load_runs([str(parent)], ["nope"])


@pytest.mark.parametrize("damage", ["truncated", "rewritten"])
def test_a_damaged_samples_file_is_one_line_and_nothing_is_written(damage, two_runs, tmp_path, capsys):
    """Issue 19 finding 13: the report reads samples through the stages' hash check. A truncated
    eval-gen samples.parquet, or one rewritten after commit (valid Parquet, other texts), is named
    in one line, exit 2, and no plots folder or report is left behind."""
    from selfplay import runs

    parent, _ = two_runs
    samples = parent / "iter-002/eval-gen/samples.parquet"
    manifest = json.loads((samples.parent / "manifest.json").read_text())
    manifest["output_files"] = {"samples.parquet": runs.fingerprint(samples)}   # as a commit records it
    (samples.parent / "manifest.json").write_text(json.dumps(manifest))
    if damage == "truncated":
        samples.write_bytes(samples.read_bytes()[:-40])
    else:
        _samples({0: "edited after the run", 1: "edited too"})(samples)
    before = sorted(tmp_path.rglob("*"))
    assert main(["compare", str(parent), "--out", str(tmp_path / "report.html")]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and str(samples) in captured.err and "Traceback" not in captured.err
    assert "no longer match the sha256 its manifest records" in captured.err and captured.out == ""
    assert sorted(tmp_path.rglob("*")) == before                 # no report-plots/, no report.html


def test_an_unreadable_samples_file_without_a_recorded_hash_is_named(two_runs, tmp_path, capsys):
    parent, _ = two_runs
    samples = parent / "iter-001/eval-gen/samples.parquet"
    samples.write_bytes(samples.read_bytes()[:-40])
    assert main(["compare", str(parent), "--out", str(tmp_path / "report.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{samples}: not a readable Parquet file" in err
    assert not (tmp_path / "report-plots").exists() and not (tmp_path / "report.html").exists()


def test_the_table_shows_control_characters_escaped(two_runs, capsys):
    """Issue 19 finding 6: a fork's changed setting holds terminal escapes; the table's notes
    show them escaped (the HTML report escapes its own way: test_compare_writes_pngs_...)."""
    _, fork = two_runs
    info = json.loads((fork / "run.json").read_text())
    info["recipe"]["tracking"] = {"group": None, "project": "evil\x1b[2J\x1b]0;owned\x07"}
    (fork / "run.json").write_text(json.dumps(info))
    assert main(["compare", str(fork)]) == 0
    out = capsys.readouterr().out      # (rich's own styling codes may be there: a terminal was detected)
    assert "\x1b[2J" not in out and "\x1b]0" not in out and "\x07" not in out
    assert "evil\\x1b[2J\\x1b]0;owned\\x07" in out
