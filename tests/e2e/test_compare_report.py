"""`selfplay compare` on two real tiny runs, one a fork of the other: the table, the PNGs, and
the HTML report opened in a real headless browser (Debian's `chromium`, installed by
`scripts/install.sh --dev`), which must decode every plot and show the runs' numbers.

The screenshot the browser takes is the README's (docs/compare-report.png): set
SELFPLAY_UPDATE_SCREENSHOT=1 to write it there."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfplay.report.read import split_metrics

from compare_helpers import png_size, read_report
from conftest import REPO

pytestmark = pytest.mark.slow
BROWSER = shutil.which("chromium")


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "selfplay.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def browser(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium on a local file, with nothing that reaches the network."""
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args, url], capture_output=True, text=True, timeout=120)


def metrics_of(run_dir: Path, iteration: int) -> dict:
    return json.loads((run_dir / f"iter-{iteration:03d}/evaluate/metrics.json").read_text())


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
    result = cli("compare", parent, fork, "--out", root / "report.html", timeout=300)
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
    plots = {p.stem: p for p in (root / "report-plots").iterdir()}
    assert {"win_rate_vs_initial", "mean_response_tokens"} <= plots.keys()
    for path in plots.values():
        width, height = png_size(path)
        assert width >= 400 and height >= 250 and path.stat().st_size > 5_000


@pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (scripts/install.sh --dev installs it)")
def test_the_report_in_a_real_browser(compared, tmp_path):
    root, parent, fork, _ = compared
    url = (root / "report.html").resolve().as_uri()
    dumped = browser(url, tmp_path / "profile", "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    report = read_report(dumped.stdout)
    assert report.body.get("data-plots") == "loaded"      # every <img> decoded, with a width
    shown = {metric for _, metric, _ in report.cells}     # one plot per metric of the table, also on disk
    assert {img["data-metric"] for img in report.images} == shown == {p.stem for p in (root / "report-plots").iterdir()}
    assert all(img["src"].startswith("data:image/png;base64,") for img in report.images)

    labels = {run_dir: next(run for run, _, _ in report.cells if run.startswith(run_dir.name + " ["))
              for run_dir in (parent, fork)}
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
    assert "fork of base" in dumped.stdout

    shot = tmp_path / "compare-report.png"
    taken = browser(url, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,900",
                    "--hide-scrollbars")
    assert taken.returncode == 0 and png_size(shot) == (1000, 900), taken.stderr[-2000:]
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
