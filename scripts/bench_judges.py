"""Judge throughput on tiny local models, written to docs/benchmarks.md.

PairRM: ordered pairs per second of the native backend at a few token budgets (its best is
reported) against llm-blender's `rank(..., return_scores=True, batch_size=1)`, the call the
released SPPO code makes, on the same tiny checkpoint, prompts and K=5 responses. The two are
also checked to agree (rank's scores vs the aggregated scores of the native logits).
Reward model and Selfie: responses per second at one budget.

The models are tiny and random, so absolute figures say little about a real PairRM on a GPU;
the ratio shows what batching and less per-call overhead buy at this size.

Every figure is the median of 5 runs after a warm-up call; the PairRM settings take turns
within each round, so load from other jobs on a shared machine hits them alike.

    python scripts/bench_judges.py [--prompts 16] [--budgets 1024,2048,4096,8192,32768]
"""

import argparse
import os
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would interleave with the figures

import numpy as np

from bench_report import cpu_name, write_section  # scripts/ is on sys.path when run as a script

SECTION = "## Judges (scripts/bench_judges.py)"
K = 5
REPEATS = 5


def synthetic_samples(num_prompts: int, seed: int = 0):
    """Prompts of 8-60 words and responses of 5-200 words drawn from standard-library text."""
    words = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text().split()
    rng = np.random.default_rng(seed)
    text = lambda low, high: " ".join(rng.choice(words, size=rng.integers(low, high)))
    prompts = [text(8, 60) for _ in range(num_prompts)]
    return prompts, [[text(5, 200) for _ in range(K)] for _ in prompts]


def interleaved_seconds(runs: dict, prompts, responses) -> tuple[dict, dict]:
    """Median wall seconds of each run(prompts, responses) over REPEATS rounds, and its last result.

    Each round goes through every run in turn, so a burst of load from other jobs on a shared
    machine hits all settings alike instead of one. A warm-up call on two prompts comes first.
    """
    for run in runs.values():
        run(prompts[:2], responses[:2])
    results, seconds = {}, {name: [] for name in runs}
    for _ in range(REPEATS):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run(prompts, responses)
            seconds[name].append(time.perf_counter() - start)
    return {name: float(np.median(s)) for name, s in seconds.items()}, results


def bench_pairrm(checkpoint: Path, prompts, responses, budgets):
    from selfplay.annotate.pairrm import PairRMJudge
    from selfplay.annotate.win_matrix import aggregated_scores

    runs = {f"native, batch_tokens={b}": PairRMJudge(str(checkpoint), batch_tokens=b).judge for b in budgets}
    blender = PairRMJudge(str(checkpoint), backend="llm-blender").blender
    runs["llm-blender rank(batch_size=1)"] = lambda p, r: blender.rank(p, r, return_scores=True, batch_size=1)
    seconds, results = interleaved_seconds(runs, prompts, responses)
    rates = {name: len(prompts) * K * (K - 1) / s for name, s in seconds.items()}
    for name, rate in rates.items():
        print(f"PairRM {name}: {rate:.1f} pairs/s")
    native_judgments, blender_scores = results[next(iter(runs))], results["llm-blender rank(batch_size=1)"]
    gap = max(np.abs(s - aggregated_scores(j.pairwise_logits)).max() for s, j in zip(blender_scores, native_judgments))
    print(f"max |rank score - native aggregated score| = {gap:.1e}")
    reference = rates.pop("llm-blender rank(batch_size=1)")
    return {budget: rates[f"native, batch_tokens={budget}"] for budget in budgets}, reference, gap


def bench_scores(judge, prompts, responses, name):
    seconds, _ = interleaved_seconds({name: judge.judge}, prompts, responses)
    rate = len(prompts) * K / seconds[name]
    print(f"{name}: {rate:.1f} responses/s")
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--budgets", default="1024,2048,4096,8192,32768", help="native PairRM token budgets to try")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="budget for the reward and selfie judges")
    parser.add_argument("--pairrm-hidden", type=int, default=64, help="PairRM backbone width (DeBERTa-v3-large: 1024)")
    parser.add_argument("--pairrm-layers", type=int, default=2, help="PairRM backbone depth (DeBERTa-v3-large: 24)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))
    args = parser.parse_args()

    import torch

    from selfplay.annotate.reward_model import RewardModelJudge
    from selfplay.annotate.selfie import SelfieJudge
    from selfplay.models.tiny_pairrm import build_tiny_pairrm
    from selfplay.models.tiny_policy import build_tiny_policy
    from selfplay.models.tiny_reward import build_tiny_reward

    load_before = os.getloadavg()[0]
    prompts, responses = synthetic_samples(args.prompts)
    budgets = [int(b) for b in args.budgets.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairrm = build_tiny_pairrm(tmp / "pairrm", hidden_size=args.pairrm_hidden, num_layers=args.pairrm_layers,
                                   num_heads=max(2, args.pairrm_hidden // 64))
        native, reference, gap = bench_pairrm(pairrm, prompts, responses, budgets)
        reward = bench_scores(RewardModelJudge(str(build_tiny_reward(tmp / "reward")), batch_tokens=args.batch_tokens),
                              prompts, responses, "reward model")
        policy, initial = build_tiny_policy(tmp / "policy", seed=1), build_tiny_policy(tmp / "reference", seed=0)
        selfie = bench_scores(SelfieJudge(str(policy), str(initial), batch_tokens=args.batch_tokens),
                              prompts, responses, "selfie")

    best = max(native, key=native.get)
    ratio = native[best] / reference
    print(f"native PairRM at batch_tokens={best} is {ratio:.1f}x llm-blender rank(batch_size=1)")
    lines = [
        SECTION, "",
        f"{time.strftime('%Y-%m-%d')}, CPU only: {cpu_name()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Tiny random models (`selfplay.models`: PairRM = {args.pairrm_layers}-layer DeBERTa-v2, "
        f"hidden {args.pairrm_hidden}, "
        f"source/candidate max length 96/48; reward = 2-layer Llama classifier, hidden 64; Selfie = two 2-layer "
        f"Llama policies, hidden 128). {args.prompts} prompts of 8-60 words, K={K} responses of 5-200 words each. "
        f"Each figure is the median of {REPEATS} rounds (the PairRM settings take turns within a round). "
        f"1-minute load average before the run: {load_before:.1f} "
        f"(about 0 on an idle machine; more means other jobs shared the cores).",
        "",
        "| judge | setting | throughput |", "| --- | --- | --- |",
        *[f"| PairRM native | batch_tokens={b} | {rate:.1f} pairs/s |" for b, rate in native.items()],
        f"| PairRM llm-blender | `rank(..., batch_size=1)` (SPPO's call) | {reference:.1f} pairs/s |",
        f"| reward model | batch_tokens={args.batch_tokens} | {reward:.1f} responses/s |",
        f"| Selfie (policy + reference) | batch_tokens={args.batch_tokens} | {selfie:.1f} responses/s |",
        "",
        f"Native PairRM at its best budget ({best}) is **{ratio:.1f}x** llm-blender at batch size 1; both judge "
        f"the same {K * (K - 1)} ordered pairs per prompt, and rank's scores equal the aggregated scores of the "
        f"native logits within {gap:.0e}. On a small CPU a tiny model gains little from large batches (its "
        f"attention tensors outgrow the caches); the batch-size-1 cost SPPO issue 10 reports is GPU "
        f"under-use with the real DeBERTa-v3-large, which this machine cannot measure.",
    ]
    write_section(Path(args.out), SECTION, lines)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
