"""Two CPU runs sharing the machine's cores, with OpenMP's idle threads sleeping (selfplay's
default: OMP_WAIT_POLICY=PASSIVE for its actors) or spinning as libgomp's default lets them.

As CI runs the test suite (two pytest processes on 2 cores) or a user runs two recipes on one
box: a 2-iteration quickstart and a 1-iteration Selfie run start together; each one's wall time
is measured, `--repeats` times per policy, alternating the policies. Prints the ratio of the
mean wall times (PASSIVE / default); below 1 means the default is faster to share cores with.

Usage: python scripts/bench_shared_cores.py [--repeats 2]
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
RUNS = {
    "quickstart": ["recipes/quickstart-cpu.yaml", "iterations=2", "prompts.per_iteration=16", "prompts.eval_size=8",
                   "train.epochs=2", "train.checkpoint_every=1", "tracking.mode=offline"],
    "selfie": ["recipes/selfie-cpu.yaml", "iterations=1", "prompts.eval_size=24", "tracking.wandb=false"],
}
# "" is not a policy libgomp knows, so it keeps its default (spin a while, then sleep); selfplay
# passes an exported value on to its actors as it is
POLICIES = {"default": "", "PASSIVE": "PASSIVE"}


def run_pair(policy: str, root: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_WAIT_POLICY": POLICIES[policy]}
    started, processes = time.monotonic(), {}
    for name, (recipe, *overrides) in RUNS.items():
        run_dir = root / f"{policy}-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        processes[name] = subprocess.Popen([sys.executable, "-m", "selfplay.cli", "run", recipe, "--run-dir", str(run_dir),
                                            *overrides], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, text=True)
    seconds = {}
    while processes:
        for name, process in list(processes.items()):
            if process.poll() is not None:
                if process.returncode != 0:
                    sys.exit(f"{name} run failed ({policy}): {process.stderr.read()[-2000:]}")
                seconds[name] = time.monotonic() - started
                del processes[name]
        time.sleep(0.1)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    measured = {policy: [] for policy in POLICIES}
    with tempfile.TemporaryDirectory(prefix="bench-shared-cores-") as root:
        for repeat in range(args.repeats):
            for policy in (POLICIES if repeat % 2 == 0 else reversed(list(POLICIES))):
                seconds = run_pair(policy, Path(root))
                measured[policy].append(seconds)
                print(f"{policy:8s} " + "  ".join(f"{name} {s:5.1f} s" for name, s in seconds.items()), flush=True)
    means = {policy: {name: sum(r[name] for r in rows) / len(rows) for name in RUNS} for policy, rows in measured.items()}
    for name in RUNS:
        print(f"{name}: PASSIVE {means['PASSIVE'][name]:.1f} s, default {means['default'][name]:.1f} s, "
              f"ratio {means['PASSIVE'][name] / means['default'][name]:.2f}")


if __name__ == "__main__":
    main()
