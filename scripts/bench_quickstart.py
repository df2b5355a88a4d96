"""The quickstart's wall time with the training ranks kept for the run vs restarted every stage.

Runs `selfplay run recipes/quickstart-cpu.yaml` (3 SPPO iterations) in turn, each in a new run
directory, on a warm machine (the tiny policy is built and cached first, untimed):
  - restarted: `train.keep_ranks=false`, new DeepSpeed ranks for every train stage (what every
    stage paid before the ranks were kept);
  - kept: the default, one set of ranks for the run, started while the engines start, training
    the next stage from the weights they hold.
Wall time is the whole command as a user waits for it (imports, Ray, the engine, every stage);
the stage seconds come from the run's manifests. Both runs must end with the same policy bytes.
Results go to docs/benchmarks.md.

    python scripts/bench_quickstart.py [--repeats 1] [--no-write]
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_report import cpu_name, write_section  # scripts/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Quickstart wall time (scripts/bench_quickstart.py)"
STAGES = ["generate", "annotate", "pairs", "train", "eval-gen", "evaluate"]


def timed_run(run_dir: Path, *overrides: str) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "run", "recipes/quickstart-cpu.yaml", "--run-dir",
                             str(run_dir), "tracking.project=selfplay-bench", *overrides], cwd=REPO,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"the quickstart failed:\n{result.stderr[-3000:]}")

    def manifest(t, stage):
        return json.loads((run_dir / f"iter-{t:03d}" / stage / "manifest.json").read_text())

    policy = run_dir / "iter-003/train/policy/model.safetensors"
    return {"wall": wall, "baseline": manifest(0, "baseline")["seconds"],
            "stages": {stage: [manifest(t, stage)["seconds"] for t in (1, 2, 3)] for stage in STAGES},
            "ranks": [manifest(t, "train")["ranks"] for t in (1, 2, 3)],
            "reference_seconds": [manifest(t, "train")["metrics"]["reference_seconds"] for t in (1, 2, 3)],
            "policy_sha256": hashlib.sha256(policy.read_bytes()).hexdigest()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setting, alternating")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-quickstart-"))
    subprocess.run([sys.executable, "-m", "selfplay.cli", "make-tiny", "llama"], cwd=REPO, check=True,
                   capture_output=True)  # warm: the policy is built once, untimed
    load_before = os.getloadavg()
    results = {"restarted": [], "kept": []}
    for repeat in range(args.repeats):
        for name, overrides in (("restarted", ["train.keep_ranks=false"]), ("kept", [])):
            print(f"running {name} ({repeat + 1}/{args.repeats}) ...", flush=True)
            results[name].append(timed_run(work / f"{name}-{repeat}", *overrides))
            print(f"  {results[name][-1]['wall']:.1f} s", flush=True)
    load_after = os.getloadavg()
    shas = {r["policy_sha256"] for runs in results.values() for r in runs}
    assert len(shas) == 1, f"the runs ended with different policies: {shas}"

    def best(name):
        return min(results[name], key=lambda r: r["wall"])

    rows = ["| setting | wall (s) | baseline (s) | train per iteration (s) | reference_seconds per iteration | "
            "generate per iteration (s) | eval-gen per iteration (s) | ranks per iteration |", "|---|---|---|---|---|---|---|---|"]
    for name in ("restarted", "kept"):
        r = best(name)
        ranks = ", ".join(f"{'kept' if x['reused'] else 'new'}/{x['policy_from']}" for x in r["ranks"])
        rows.append(f"| {name} | {r['wall']:.1f} | {r['baseline']:.1f} | "
                    f"{' / '.join(f'{s:.1f}' for s in r['stages']['train'])} | "
                    f"{' / '.join(f'{s:.1f}' for s in r['reference_seconds'])} | "
                    f"{' / '.join(f'{s:.1f}' for s in r['stages']['generate'])} | "
                    f"{' / '.join(f'{s:.1f}' for s in r['stages']['eval-gen'])} | {ranks} |")
    kept, restarted = best("kept"), best("restarted")
    lines = [SECTION, "",
             f"{datetime.date.today()}, `python scripts/bench_quickstart.py --repeats {args.repeats}` on {cpu_name()} "
             f"({os.cpu_count()} cores), Python {platform.python_version()}; warm machine (tiny policy cached, "
             f"packages imported before); load average {load_before[0]:.1f} before, {load_after[0]:.1f} after. "
             f"Fastest of {args.repeats} run(s) each.", "", *rows, "",
             f"- kept / restarted: wall time {kept['wall'] / restarted['wall']:.2f}x "
             f"({kept['wall']:.1f} s vs {restarted['wall']:.1f} s); train stages together "
             f"{sum(kept['stages']['train']) / sum(restarted['stages']['train']):.2f}x",
             f"- both end with the same policy (sha256 {kept['policy_sha256'][:16]}...)", "",
             "Wall: the whole `selfplay run` as the user waits for it (imports, Ray start, the vLLM engine's start "
             "inside the baseline stage, all 3 iterations, the table). `ranks per iteration`: whether the train "
             "stage found the run's ranks alive (kept) or started new ones, and whether they trained the policy "
             "from the weights they held (memory) or read it (disk). reference_seconds: from the stage's start in "
             "the ranks to the reference log-probs done (tokenizer, pairs, policy, reference pass)."]
    print("\n".join(lines))
    if not args.no_write:
        write_section(Path(args.out), SECTION, lines)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
