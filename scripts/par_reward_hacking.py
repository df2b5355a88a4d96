"""PAR against reward hacking: a judge the policy can game for training, the intended one for evaluation.

The training judge counts the letter 'e' (selfplay.judges:letter_e_count): a longer response
holds more of them, so the policy can raise its reward by writing longer text (in characters:
the tiny policy fills its max_tokens, so it lengthens by choosing longer tokens). The intended
preference is the share of 'e' (letter_e_fraction), the evaluation judge. Each setting runs
recipes/par-cpu.yaml for `--iterations` on the same seed: `raw` (annotate.shaping=none) and
PAR (and with --all, centered and lsc). Per iteration it prints the true win rate against the
initial policy (with its bootstrap 95% interval over eval prompts) and the mean response
length in characters. This is a measurement on a tiny model: one seed, no test floor.

    python scripts/par_reward_hacking.py [--iterations 3] [--all] [--no-write]
"""

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from bench_report import cpu_name, write_section  # scripts/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
SECTION = "## PAR against a gameable judge (scripts/par_reward_hacking.py)"
SHARED = ["tracking.wandb=false", "prompts.eval_size=24", "evaluate.judge.type=function",
          "evaluate.judge.function=selfplay.judges:letter_e_fraction"]


def run(run_dir: Path, iterations: int, shaping: str) -> list[dict]:
    """One run; per iteration 0..T: true win rate (and interval), mean characters, proxy score."""
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "run", "recipes/par-cpu.yaml", "--run-dir",
                             str(run_dir), f"iterations={iterations}", *SHARED,
                             f"annotate.shaping={shaping}" if shaping == "none" else f"annotate.shaping.type={shaping}"],
                            capture_output=True, text=True, cwd=REPO, timeout=3600)
    if result.returncode != 0:
        sys.exit(f"{shaping} run failed: {result.stderr[-2000:]}")
    rows = []
    for t in range(iterations + 1):
        stage = "iter-000/baseline" if t == 0 else f"iter-{t:03d}/eval-gen"
        texts = pq.read_table(run_dir / stage / "samples.parquet").column("text").to_pylist()
        row = {"iteration": t, "chars": float(np.mean([len(x) for x in texts])),
               "e_count": float(np.mean([x.lower().count("e") for x in texts]))}
        if t:
            metrics = json.loads((run_dir / f"iter-{t:03d}/evaluate/metrics.json").read_text())
            row |= {"win_rate": metrics["win_rate_vs_initial"], "low": metrics["win_rate_vs_initial_ci_low"],
                    "high": metrics["win_rate_vs_initial_ci_high"]}
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--all", action="store_true", help="also centered and lsc")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    settings = ["none", "par"] + (["centered", "lsc"] if args.all else [])
    results = {}
    with tempfile.TemporaryDirectory() as base:
        for shaping in settings:
            results[shaping] = run(Path(base) / shaping, args.iterations, shaping)
            print(f"{shaping}: done", flush=True)
    lines = [SECTION, "",
             f"{datetime.date.today()}, {cpu_name()}: recipes/par-cpu.yaml, {args.iterations} iterations, seed 0; training "
             "judge letter_e_count (more 'e', so longer text pays), evaluation judge letter_e_fraction (the share "
             "of 'e', the intended preference). True win rate vs the initial policy (95% bootstrap interval over 24 "
             "eval prompts) and mean response length in characters (the initial policy's in iteration 0). One seed: "
             "a measurement, not a floor.", "",
             "| shaping | iter | true win rate | 95% interval | mean chars | mean 'e' count |", "|---|---|---|---|---|---|"]
    for shaping, rows in results.items():
        for row in rows:
            rate = f"{row['win_rate']:.3f}" if "win_rate" in row else "0.500"
            interval = f"({row['low']:.3f}, {row['high']:.3f})" if "low" in row else "-"
            lines.append(f"| {'raw' if shaping == 'none' else shaping} | {row['iteration']} | {rate} | {interval} | "
                         f"{row['chars']:.1f} | {row['e_count']:.2f} |")
    print("\n".join(lines))
    if not args.no_write:
        write_section(REPO / "docs" / "benchmarks.md", SECTION, lines)


if __name__ == "__main__":
    main()
