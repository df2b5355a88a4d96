"""The methods table: every training method on the same tiny policy, prompts and judge, 3 iterations each.

Each method runs its CPU recipe (recipes/*-cpu.yaml) with the same overrides: the judge given by
module path (default `selfplay.judges:distinct_letters`, which no test or recipe is tuned to)
for annotation and evaluation, 3 iterations, the same 24 eval prompts, W&B off. DRIFT trains on
its own DSAT records (it has no judge in its loop; the judge only scores its evaluation), and
Selfie's annotation is its own log-likelihood judge (the given judge scores its evaluation).
Per iteration and method: win rate vs the initial policy with its bootstrap 95% interval,
length-controlled win rate, KL to the initial policy and mean response tokens, next to what
each paper claims at 7B scale. Results go to docs/methods.md (and stdout).

    python scripts/bench_methods.py [--judge selfplay.judges:distinct_letters] [--iterations 3]
"""

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_report import cpu_name  # scripts/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
# (method, recipe, its own overrides, what the paper reports; from ../shared/seeds and ALGORITHMS.md)
METHODS = [
    ("SPPO", "quickstart-cpu", [],
     "Mistral-7B-Instruct, PairRM: AlpacaEval 2.0 LC win rate 28.53% vs GPT-4-Turbo; above iterative DPO, IPO"),
    ("SPPO (sppo_hard)", "quickstart-cpu", ["train.loss=sppo_hard"], "TRL's SPPO variant with hard targets (no paper table)"),
    ("iterative DPO", "iterative-dpo-cpu", [], "RLHFlow / Snorkel PairRM-DPO: the baseline SPPO and DRIFT compare with"),
    ("IPO", "iterative-dpo-cpu", ["train.loss=ipo"], "Azar et al.: a baseline in SPPO's tables"),
    ("TPO", "tpo-cpu", [], "Mistral-7B on UltraFeedback: MT-Bench +0.63 over DPO, +1.27 over SFT"),
    ("ASFT", "asft-cpu", [], "Llama3 on UltraFeedback / HH-RLHF: beats DPO and ORPO on MT-Bench"),
    ("Curry-DPO (tiers)", "curry-dpo-cpu", [], "Zephyr-7B: MT-Bench 7.43; up to +7.5% over single-pair DPO"),
    ("Selfie", "selfie-cpu", [], "AlpacaEval 2.0 with 3.3% of UltraFeedback's labels, above full-label baselines"),
    ("DRIFT (own data)", "drift-cpu", [], "7B: AlpacaEval2 win rate up to +8.95% over the base model, above iterative DPO"),
]
# Selfie judges with the policy's own log-likelihood: the given judge scores its evaluation
# (its recipe's evaluate.judge). DRIFT's annotate entry scores only its evaluation anyway.
EVALUATION_JUDGE = {"selfie-cpu"}


def run_method(run_dir: Path, recipe: str, overrides: list[str], judge: str, iterations: int) -> dict:
    judged = [f"{'evaluate.judge' if recipe in EVALUATION_JUDGE else 'annotate'}.function={judge}"]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "run", f"recipes/{recipe}.yaml", "--run-dir",
                             str(run_dir), f"iterations={iterations}", "prompts.eval_size=24", "tracking.wandb=false",
                             *judged, *overrides], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{recipe} {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    rows = []
    for t in range(1, iterations + 1):
        m = json.loads((run_dir / f"iter-{t:03d}/evaluate/metrics.json").read_text())
        # every train stage of the iteration (Curry-DPO's tiers are several)
        trains = [json.loads(path.read_text()) for path in sorted((run_dir / f"iter-{t:03d}").glob("train*/manifest.json"))]
        rows.append({"iteration": t, "win_rate": m["win_rate_vs_initial"], "low": m["win_rate_vs_initial_ci_low"],
                     "high": m["win_rate_vs_initial_ci_high"], "lc": m["length_controlled_win_rate_vs_initial"],
                     "kl": m["kl_vs_initial"], "tokens": m["mean_response_tokens"],
                     "train_seconds": sum(train["seconds"] for train in trains),
                     "reference_seconds": sum(train["metrics"].get("reference_seconds", 0.0) for train in trains)})
    return {"rows": rows, "wall": wall}


def table(results: dict) -> list[str]:
    lines = ["| method | iteration | win rate vs initial (95% CI) | LC win rate | KL vs initial | mean tokens "
             "| train s (reference pass s) | the paper (7B scale) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method, _, _, claim in METHODS:
        for row in results[method]["rows"]:
            lines.append(f"| {method if row['iteration'] == 1 else ''} | {row['iteration']} | {row['win_rate']:.3f} "
                         f"({row['low']:.3f}, {row['high']:.3f}) | {row['lc']:.3f} | {row['kl']:.2f} | {row['tokens']:.1f} "
                         f"| {row['train_seconds']:.1f} ({row['reference_seconds']:.1f}) | {claim if row['iteration'] == 1 else ''} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", default="selfplay.judges:distinct_letters", help="module:function of the judge")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="method names to run (default: all)")
    parser.add_argument("--out", default=str(REPO / "docs" / "methods.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    methods = [m for m in METHODS if not args.only or m[0] in args.only]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as root:
        for number, (method, recipe, overrides, _) in enumerate(methods):
            print(f"[{number + 1}/{len(methods)}] {method}: recipes/{recipe}.yaml {' '.join(overrides)}", flush=True)
            results[method] = run_method(Path(root) / f"run{number}", recipe, overrides, args.judge, args.iterations)
            final = results[method]["rows"][-1]
            print(f"    {results[method]['wall']:.0f} s, final win rate {final['win_rate']:.3f} "
                  f"({final['low']:.3f}, {final['high']:.3f})", flush=True)
    if len(methods) < len(METHODS):  # a partial run (--only) prints its rows and writes nothing
        for method, data in results.items():
            print(method, data["rows"])
        return
    lines = table(results)
    print("\n".join(lines))
    if args.no_write:
        return
    total = sum(r["wall"] for r in results.values())
    text = [
        "# Methods table (scripts/bench_methods.py)", "",
        f"{datetime.date.today().isoformat()}, {cpu_name()}, one run of `python scripts/bench_methods.py` "
        f"({total / 60:.0f} min). Every method's CPU recipe on the tiny local Llama (`tiny:llama`, seed 0), "
        f"{args.iterations} iterations of 32 prompts, K = 4 samples (DRIFT: 1 hindsight sample per DSAT record), "
        f"the same 24 eval prompts x 4 samples, judge `{args.judge}` (annotation and evaluation; Selfie and "
        "DRIFT: evaluation only). Win rates are against the initial policy's samples under that judge, with the "
        "bootstrap 95% interval over the eval prompts; LC = length-controlled (docs/algorithms.md); KL = the "
        "sampled estimate of KL(pi_t || pi_0) per response; train s = the iteration's train stages, of which "
        "the reference pass (TPO and ASFT are reference-free: no reference model, no pass).", "",
        *lines, "",
        "This is the papers' tables in miniature, not their results: a 2-layer random model, a letter-count "
        "judge and 96 training prompts. It shows what each method does to the same policy under the same judge "
        "(how fast it moves, how far from the initial policy, whether lengths change), so a recipe can be "
        "chosen before renting a cluster. The papers' claims are at 7B scale on real benchmarks.", ""]
    Path(args.out).write_text("\n".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
