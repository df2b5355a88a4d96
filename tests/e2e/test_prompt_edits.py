"""Issue 19 finding 1: an edited prompt file is noticed on resume, through the real CLI.

One tiny run, then the prompt file is edited in place twice: one training prompt of iteration 1
(generate and everything after it is redone, the baseline is not), then one eval prompt (the
baseline and eval-gen are redone, generate..train are not). Each redo says so on the console and
the old result is kept in superseded/."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
TINY = ["iterations=1", "prompts.per_iteration=8", "prompts.eval_size=4", "train.epochs=1",
        "evaluate.samples_per_prompt=2", "tracking.wandb=false"]
ITERATION_1 = ["generate", "annotate", "pairs", "train", "eval-gen", "evaluate"]


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "selfplay.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def edit_prompt(path: Path, prompt_id: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[prompt_id] = json.dumps({"prompt": text}) + "\n"
    path.write_text("".join(lines))  # in place: same path, same ids, new text


def config(run_dir: Path, iteration: int, stage: str) -> dict:
    return json.loads((run_dir / f"iter-{iteration:03d}/{stage}/manifest.json").read_text())["config"]


def stage_lines(stderr: str) -> dict[tuple[int, str], str]:
    """(iteration, stage) -> "skipped" or "running", from the driver's progress lines."""
    seen = {}
    for line in stderr.splitlines():
        for iteration, stage in [(0, "baseline")] + [(1, s) for s in ITERATION_1]:
            if f"iter {iteration} {stage:<9} done earlier, skipped" in line:
                seen[(iteration, stage)] = "skipped"
            elif f"iter {iteration} {stage:<9} running" in line:
                seen[(iteration, stage)] = "running"
    return seen


def test_an_edited_prompt_redoes_exactly_the_stages_that_read_it(tmp_path, tiny_policy):
    started = time.time()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Write a line about topic {i}."}) + "\n" for i in range(40)))
    run_dir = tmp_path / "run"
    first = cli("run", "recipes/quickstart-cpu.yaml", "--run-dir", run_dir, f"prompts.path={prompts}", *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    train_id = config(run_dir, 1, "generate")["prompt_ids"][0]
    eval_id = config(run_dir, 0, "baseline")["prompt_ids"][0]

    edit_prompt(prompts, train_id, "An edited training prompt about the sea.")
    resumed = cli("resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert stage_lines(resumed.stderr) == {(0, "baseline"): "skipped", **{(1, s): "running" for s in ITERATION_1}}
    assert "iter 1 generate  its prompts changed" in resumed.stderr
    assert "baseline  its prompts changed" not in resumed.stderr
    samples = pq.read_table(run_dir / "iter-001/generate/samples.parquet").to_pylist()
    assert {s["prompt"] for s in samples if s["prompt_id"] == train_id} == {"An edited training prompt about the sea."}
    moved = list((run_dir / "superseded").glob("*/iter-001/generate/samples.parquet"))
    assert len(moved) == 1
    reason = json.loads((moved[0].parents[2] / "reason.json").read_text())
    assert "prompts_digest" in reason["changed_config_keys"]

    edit_prompt(prompts, eval_id, "An edited eval prompt about the mountains.")
    resumed = cli("resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    redone = {(0, "baseline"), (1, "eval-gen"), (1, "evaluate")}
    assert stage_lines(resumed.stderr) == {key: "running" if key in redone else "skipped"
                                           for key in [(0, "baseline")] + [(1, s) for s in ITERATION_1]}
    assert "iter 0 baseline  its prompts changed" in resumed.stderr
    assert "iter 1 eval-gen  its prompts changed" in resumed.stderr
    for stage in ("baseline", "eval-gen"):
        iteration = 0 if stage == "baseline" else 1
        samples = pq.read_table(run_dir / f"iter-{iteration:03d}/{stage}/samples.parquet").to_pylist()
        assert {s["prompt"] for s in samples if s["prompt_id"] == eval_id} == {"An edited eval prompt about the mountains."}
        assert list((run_dir / "superseded").glob(f"*/iter-{iteration:03d}/{stage}/manifest.json"))
    print(f"wall time {time.time() - started:.0f} s")
