"""`selfplay compare` on two real tiny runs, one a fork of the other: the table, the PNGs, and
the HTML report opened in a real headless browser (Debian's `chromium`, installed by
`scripts/install.sh --dev`), which must decode every plot and show the runs' numbers: the
headline panel's final numbers equal to metrics.jsonl, key curves from iteration 0 with integer
ticks, a constant metric as a table row and no plot, folders relative to where compare ran.
Then the run grid of 5 runs: copies of the shared run (hard links; metrics.json, manifest and
run.json rewritten through the project's own functions), two of them forks, so no new training.

The screenshot the browser takes is the README's (docs/compare-report.png): set
SELFPLAY_UPDATE_SCREENSHOT=1 to write it there."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfplay import runs
from selfplay.report.decide import KEY_NAMES, is_constant
from selfplay.report.read import split_metrics

from compare_helpers import png_size, read_report
from conftest import REPO

pytestmark = pytest.mark.slow
BROWSER = shutil.which("chromium")


def cli(*args, timeout=900, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "selfplay.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def browser(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium on a local file, with nothing that reaches the network."""
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args, url], capture_output=True, text=True, timeout=120)


def metrics_of(run_dir: Path, iteration: int) -> dict:
    return json.loads((run_dir / f"iter-{iteration:03d}/evaluate/metrics.json").read_text())


def evaluate_rows(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl's evaluate rows by iteration (the last row of an iteration wins, as on resume)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {row["iteration"]: row for row in rows if row.get("stage") == "evaluate"}


def open_report(path: Path, profile: Path):
    dumped = browser(path.resolve().as_uri(), profile, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    return dumped.stdout, read_report(dumped.stdout)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_run):
    """The shared tiny run (conftest.tiny_run, W&B offline: the runs compared are the runs W&B
    shows) and a fork of it from iteration 2."""
    root = tmp_path_factory.mktemp("compare")
    parent, fork = tiny_run[0], root / "beta-fork"
    # one RMSprop step hardly depends on beta (the update is normalised), so the fork also takes a
    # larger step: its iteration 2 must differ from the parent's for the table check to mean anything
    result = cli("fork", parent, "--from-iteration", 2, "train.beta=0.05", "train.learning_rate=0.002",
                 "--name", "beta-fork", "--run-dir", fork)
    assert result.returncode == 0, result.stderr[-3000:]
    # from the folder above both, as a user compares ./runs/*: the report shows tiny-run0/base, not /tmp/...
    here = Path(os.path.commonpath([parent, fork]))
    result = cli("compare", parent.relative_to(here), fork.relative_to(here), "--out", root / "report.html",
                 timeout=300, cwd=here)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, parent, fork, result.stdout


def test_the_table_shows_both_runs_and_the_fork_relation(compared):
    _, parent, fork, printed = compared
    for run_dir in (parent, fork):
        for iteration in (1, 2):
            assert f"{metrics_of(run_dir, iteration)['win_rate_vs_initial']:.4g}" in printed
    assert "fork of base" in printed and "at iteration 2 (train.beta: 0.02 -> 0.05; train.learning_rate:" in printed
    assert metrics_of(parent, 1) == metrics_of(fork, 1)        # shared
    assert metrics_of(parent, 2) != metrics_of(fork, 2)        # the fork's own


def test_the_plots_are_real_pngs(compared):
    root, _, _, _ = compared
    plots = {p.stem: p for p in (root / "report-plots").glob("*.png")}
    assert {"win_rate_vs_initial", "mean_response_tokens"} <= plots.keys()
    for path in plots.values():
        width, height = png_size(path)
        assert width >= 400 and height >= 250 and path.stat().st_size > 5_000


@pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (scripts/install.sh --dev installs it)")
def test_the_report_in_a_real_browser(compared, tmp_path):
    root, parent, fork, _ = compared
    url = (root / "report.html").resolve().as_uri()
    html, report = open_report(root / "report.html", tmp_path / "profile")
    assert report.body.get("data-plots") == "loaded"      # every <img> decoded, with a width
    labels = {run_dir: next(run for run, _, _ in report.cells if run.startswith(run_dir.name + " ["))
              for run_dir in (parent, fork)}

    # the headline panel: each run's final numbers, exactly metrics.jsonl's
    assert report.headline_rows == [labels[parent], labels[fork]]           # the fork under its parent
    for run_dir in (parent, fork):
        final = evaluate_rows(run_dir)[2]
        shown = {metric for label, metric in report.headline if label == labels[run_dir]}
        assert {"win_rate_vs_initial", "win_rate_vs_previous", "length_controlled_win_rate_vs_initial",
                "kl_vs_initial", "mean_response_tokens"} <= shown
        for metric in shown:
            cell = report.headline[(labels[run_dir], metric)]
            assert float(cell["data-value"]) == final[metric], (run_dir.name, metric)
            assert cell["text"].startswith(f"{final[metric]:.4g}")
            if f"{metric}_ci_low" in final:
                assert f"[{final[metric + '_ci_low']:.4g}, {final[metric + '_ci_high']:.4g}]" in cell["text"]

    # key curves from iteration 0 (the initial policy), integer ticks only
    figures = {img["data-metric"]: img for img in report.images}
    for metric in ("win_rate_vs_initial", "kl_vs_initial", "mean_response_tokens"):
        assert figures[metric]["data-xticks"] == "0 1 2", metric

    # a constant metric is one table row, not a plot; every other metric has one plot, also on disk
    rows = [row for run_dir in (parent, fork) for row in evaluate_rows(run_dir).values()]   # the fork logs only its own
    constant = {name for name in set(split_metrics(metrics_of(parent, 1))[0]) - set(KEY_NAMES)
                if is_constant([row[name] for row in rows if name in row])}
    assert constant, "the tiny runs were expected to have a constant metric (finished_fraction, distinct_2)"
    for name in constant:
        assert report.cells[(labels[parent], name, "all")] == f"{rows[0][name]:.4g}"
        assert name not in figures
    in_table = {metric for _, metric, _ in report.cells}
    assert set(figures) == in_table - constant == {p.stem for p in (root / "report-plots").glob("*.png")}
    assert all(img["src"].startswith("data:image/png;base64,") for img in report.images)

    for run_dir in (parent, fork):
        for iteration in (1, 2):
            metrics = metrics_of(run_dir, iteration)
            _, intervals = split_metrics(metrics)       # whichever shape the evaluate stage wrote
            for name in ("win_rate_vs_initial", "mean_response_tokens"):
                text = report.cells[(labels[run_dir], name, iteration)]
                assert text.startswith(f"{metrics[name]:.4g}"), (run_dir.name, name, iteration, text)
                if name in intervals:
                    assert f"[{intervals[name][0]:.4g}, {intervals[name][1]:.4g}]" in text
    assert report.cells[(labels[fork], "win_rate_vs_initial", 1)].endswith("*")    # the parent's iteration
    assert report.cells[(labels[fork], "win_rate_vs_initial", 1)].rstrip("*") == \
        report.cells[(labels[parent], "win_rate_vs_initial", 1)]
    assert "fork of base" in html and "train.beta: 0.02 -&gt; 0.05" in html
    assert f"<td>{parent.parent.name}/base</td>" in html            # relative to where compare ran
    assert str(parent.parent.parent) not in html                     # no machine path anywhere

    shot = tmp_path / "compare-report.png"
    taken = browser(url, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,1000",
                    "--hide-scrollbars")
    assert taken.returncode == 0 and png_size(shot) == (1000, 1000), taken.stderr[-2000:]
    assert shot.stat().st_size < 200_000
    if os.environ.get("SELFPLAY_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, REPO / "docs" / "compare-report.png")


def test_wandb_holds_each_runs_artifacts_and_example_tables(compared):
    """The same two runs in W&B's offline files: each iteration the run trained is a policy
    reference artifact (the fork logs only its own iteration and uses its parent's policy), and
    each evaluated iteration has one `examples` Table."""
    from selfplay.track.wandb_offline import find_run_files, read_artifacts, read_records

    _, parent, fork = compared[:3]
    for run_dir, own_iterations in ((parent, [1, 2]), (fork, [2])):
        (run_file,) = find_run_files(run_dir)
        artifacts = read_artifacts(run_file)
        policies = sorted(a["metadata"]["iteration"] for a in artifacts
                          if not a["use_after_commit"] and a["metadata"].get("stage") == "train")
        assert policies == own_iterations
        assert all(ref.startswith(run_dir.resolve().as_uri()) for a in artifacts if not a["use_after_commit"]
                   and a["metadata"].get("stage") for ref in a["references"])
        tables = [record for record in read_records(run_file, "history")
                  if any("examples" in (item.key or "/".join(item.nested_key)) for item in record.item)]
        assert len(tables) == len(own_iterations)
    used = [a["name"] for a in read_artifacts(find_run_files(fork)[0]) if a["use_after_commit"]]
    assert f"{json.loads((parent / 'run.json').read_text())['name']}-policy" in used


# -- the run grid ------------------------------------------------------------------------------------
def _copy_run(pristine: Path, run_dir: Path, run_id: str, shift: float, parent: tuple[Path, str] | None = None) -> None:
    """A copy of the pristine shared run as another run: its files hard links (nothing trained),
    run.json re-identified (name, run id, a fork's parent pointer and changed beta), and its last
    evaluation's win rate moved by `shift`, with the evaluate manifest re-hashed as a commit would."""
    shutil.copytree(pristine, run_dir, symlinks=True, copy_function=os.link)
    info = json.loads((run_dir / "run.json").read_text())
    info.update(name=run_dir.name, run_id=run_id, forks=[])
    info["recipe"]["name"] = run_dir.name
    if parent is not None:
        info["parent"] = {"run_dir": str(parent[0]), "run_id": parent[1], "iteration": 2, "shared_iterations": [1]}
        info["recipe"]["train"]["beta"] = 0.05
    runs.write_json_atomic(run_dir / "run.json", info)             # atomic: a new file, not the linked one
    evaluate = run_dir / "iter-002/evaluate"
    metrics = json.loads((evaluate / "metrics.json").read_text())
    for key in ("win_rate_vs_initial", "win_rate_vs_initial_ci_low", "win_rate_vs_initial_ci_high"):
        metrics[key] = min(1.0, metrics[key] + shift)
    runs.write_json_atomic(evaluate / "metrics.json", metrics)
    manifest = json.loads((evaluate / runs.MANIFEST).read_text())
    manifest["output_files"]["metrics.json"] = runs.fingerprint(evaluate / "metrics.json")
    manifest["outputs"]["metrics.json"] = runs.content_digest(manifest["output_files"]["metrics.json"])
    manifest["metrics"] = metrics
    runs.write_json_atomic(evaluate / runs.MANIFEST, manifest)


@pytest.fixture(scope="module")
def five_runs(tmp_path_factory, tiny_run):
    root = tmp_path_factory.mktemp("grid")
    pristine = tiny_run[1]
    plan = [("a", None), ("b", None), ("c", None), ("a-fork", "a"), ("b-fork", "b")]
    for index, (name, parent) in enumerate(plan):
        _copy_run(pristine, root / name, f"run{index:08d}", 0.05 * index,
                  (root / parent, f"run{[n for n, _ in plan].index(parent):08d}") if parent else None)
    result = cli("compare", *(name for name, _ in plan), "--out", "report.html", "--examples", 1, timeout=300,
                 cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, plan


@pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (scripts/install.sh --dev installs it)")
def test_five_runs_are_a_grid_with_sparklines_and_forks_under_their_parents(five_runs, tmp_path):
    root, plan = five_runs
    html, report = open_report(root / "report.html", tmp_path / "profile")
    assert report.body.get("data-plots") == "loaded"
    assert 'id="headline" class="grid"' in html
    assert [label.split(" [")[0] for label in report.headline_rows] == ["a", "a-fork", "b", "b-fork", "c"]
    assert "train.beta: 0.02 -&gt; 0.05" in html and html.count("fork of a [run000]") >= 1
    # one sparkline per run and key metric, each curve from iteration 0 to 2
    per_cell = {(key[1], key[2]): attrs for key, attrs in report.sparklines}
    shown = {metric for _, metric in report.headline}
    assert len(per_cell) == 5 * len(shown) and {"win_rate_vs_initial", "kl_vs_initial"} <= shown
    assert all(attrs["data-points"] == "3" for attrs in per_cell.values())
    # the last copy has the highest win rate: the best, its number the edited metrics.json's
    winner = next(label for label in report.headline_rows if label.startswith("b-fork ["))
    cell = report.headline[(winner, "win_rate_vs_initial")]
    assert "★" in cell["text"] and float(cell["data-value"]) == metrics_of(root / "b-fork", 2)["win_rate_vs_initial"]
    assert sum("★" in report.headline[(label, "win_rate_vs_initial")]["text"] for label in report.headline_rows) == 1
