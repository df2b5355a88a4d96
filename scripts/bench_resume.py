"""Resume cost vs the number of finished iterations.

Builds one 9-iteration run of the tiny policy, then copies it twice: stopped after iteration 1
and stopped after iteration 8 (later iterations removed). For each, `selfplay resume` is timed
from the command's start to the moment the driver starts the first unfinished stage
(`iter N+1 generate running` in its log). Finished stages are checked (manifest, input hashes,
output fingerprints), not recomputed, so the two times should be about equal. Then the
finished run itself is resumed (nothing to do): its whole command time, which starts no Ray
cluster.

    .venv/bin/python scripts/bench_resume.py [--work DIR]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ["iterations=9", "prompts.per_iteration=8", "prompts.eval_size=8", "train.epochs=1",
            "generate.samples_per_prompt=2", "evaluate.samples_per_prompt=1", "tracking.wandb=false"]


def time_to_first_unfinished_stage(run_dir: Path, next_iteration: int) -> tuple[float, float]:
    """Seconds until the driver starts the first unfinished stage, and its check of finished ones."""
    marker = f"iter {next_iteration} generate  running"
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "selfplay.cli", "resume", str(run_dir)], cwd=REPO,
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    first_check = None
    for line in process.stderr:
        now = time.perf_counter()
        if "done earlier, skipped" in line and first_check is None:
            first_check = now
        if marker in line:
            os.killpg(process.pid, 9)
            process.wait()
            return now - started, now - (first_check or now)
    raise RuntimeError(f"{run_dir}: resume never reached {marker!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-resume-"))
    full = work / "full"
    if not (full / "iter-009" / "evaluate" / "manifest.json").exists():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "selfplay.cli", "run", "recipes/quickstart-cpu.yaml", "--run-dir",
                        str(full), *SETTINGS], cwd=REPO, check=True, capture_output=True)
        print(f"built a 9-iteration run in {time.perf_counter() - started:.0f} s")
    rows = []
    for finished in (1, 8):
        run_dir = work / f"stopped-after-{finished}"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(full, run_dir, symlinks=True, copy_function=shutil.copy2)  # copy2 keeps mtimes
        for later in range(finished + 1, 10):
            shutil.rmtree(run_dir / f"iter-{later:03d}")
        total, checks = time_to_first_unfinished_stage(run_dir, finished + 1)
        rows.append((finished, total, checks))
    print(f"{'finished iterations':>20} {'resume -> first unfinished stage (s)':>38} {'of which stage checks (s)':>27}")
    for finished, total, checks in rows:
        print(f"{finished:>20} {total:>38.2f} {checks:>27.2f}")
    print(f"ratio (8 finished / 1 finished): {rows[1][1] / rows[0][1]:.2f}")
    started = time.perf_counter()  # the finished run: every stage checked, nothing to run
    subprocess.run([sys.executable, "-m", "selfplay.cli", "resume", str(full)], cwd=REPO, check=True,
                   capture_output=True)
    print(f"resume of the finished 9-iteration run: {time.perf_counter() - started:.2f} s, "
          f"Ray started: {(full / 'logs/ray_processes.json').exists()}")


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    main()
