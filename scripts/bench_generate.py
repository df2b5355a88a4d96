"""Generation throughput: our whole generate stage vs raw `vllm.LLM.generate`, in one run.

Both sample the same prompts with the same sampling parameters on the same model:
  - ours: what the driver's generate stage does after the engine is up: chat-template
    tokenization of each prompt (`selfplay.generate.stage.generate_samples`), the long-prompt
    rule, per-prompt seeded n=K requests through `EnginePool` (one vLLM engine in a Ray actor,
    the recipe's engine settings for this device), the rows of samples.parquet, and writing it;
  - raw: `vllm.LLM(**engine_options(...)).generate` in a plain child process (no Ray in it) on the
    already tokenized prompts, with the same seeded `SamplingParams` (tokenization and writing
    are not timed).
Tokens/s = response tokens / wall time of one call; the engines are started and warmed up first
(engine start is a once-per-run cost, left out). The two run in alternating order for --rounds
rounds and the medians are compared; both produce the same token ids (checked), so they do the
same work. Every thread of the engine actors and of this process gets the same niceness: Ray's
worker niceness, or --nice (a negative value needs root) so that other jobs on a shared machine
disturb the measurement less: an OpenMP engine whose threads do not all get a core at once slows
down several-fold, however many threads it has.

Variants of ours (--variants) show what the settings this script replaced cost: `logprobs` asks
for sampled-token log-probs (the old default) and `1 thread` runs the engine on the single
OpenMP thread Ray gives a num_cpus=1 actor (the old behaviour).

    python scripts/bench_generate.py [--prompts 64] [--samples 4] [--max-tokens 128] [--rounds 3]
                                     [--threads 0] [--nice N] [--variants logprobs,1thread] [--no-write]

The same script runs on a machine with CUDA vLLM (the engine then gets one GPU and vLLM's
own defaults).
"""

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_report import cpu_name, write_section  # scripts/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Generation (scripts/bench_generate.py)"
VARIANTS = {"logprobs": {"store_logprobs": True}, "1thread": {"cpu_threads": 1}}


def load_prompts(count: int) -> list[str]:
    lines = (REPO / "recipes" / "data" / "quickstart_prompts.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines]
    return [prompts[i % len(prompts)] + ("" if i < len(prompts) else f" (variant {i // len(prompts)})")
            for i in range(count)]


def renice(pid: int, value: int) -> None:
    """Set the niceness of every thread of process `pid` (Linux niceness is per thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.setpriority(os.PRIO_PROCESS, int(tid), value)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, all threads (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_ours(pool, tokenizer, prompts, sampling, config, out: Path) -> dict:
    import pyarrow.parquet as pq

    from selfplay.generate.stage import generate_samples

    start = time.perf_counter()
    table, _ = generate_samples(pool, tokenizer, list(range(len(prompts))), prompts, run_seed=0, iteration=1,
                                purpose="train", max_model_len=config.max_model_len, long_prompts=config.long_prompts,
                                **sampling)
    pq.write_table(table, out)
    seconds = time.perf_counter() - start
    token_ids = table.column("token_ids").to_pylist()
    return {"seconds": seconds, "tokens": sum(map(len, token_ids)), "token_ids": token_ids}


def run_raw(llm, prompt_ids, seeds, sampling) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [SamplingParams(n=sampling["n"], temperature=sampling["temperature"], top_p=sampling["top_p"],
                             max_tokens=sampling["max_tokens"], seed=seed) for seed in seeds]
    start = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], sampling_params=params,
                           use_tqdm=False)
    seconds = time.perf_counter() - start
    token_ids = [list(c.token_ids) for o in outputs for c in sorted(o.outputs, key=lambda c: c.index)]
    return {"seconds": seconds, "tokens": sum(map(len, token_ids)), "token_ids": token_ids}


def raw_server(conn, device: str, config_json: str, policy: str, threads: int) -> None:
    """Child process: a plain vLLM engine that runs `run_raw` on each (prompt_ids, seeds, sampling) it gets."""
    from selfplay.generate.engine import engine_env, engine_options
    from selfplay.recipe import GenerateConfig

    for key, value in engine_env(device).items():
        os.environ.setdefault(key, value)
    if device == "cpu":
        os.environ["OMP_NUM_THREADS"] = str(threads)  # what the engine actor sets
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)
    import vllm

    llm = vllm.LLM(**engine_options(device, GenerateConfig.model_validate_json(config_json), policy, "float32", 0))
    conn.send({"pid": os.getpid(), "threads": torch.get_num_threads(), "vllm": vllm.__version__})
    while (request := conn.recv()) is not None:
        conn.send(run_raw(llm, *request))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="K samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads of both engines (0: the cores)")
    parser.add_argument("--nice", type=int, default=None, help="niceness of both (default: Ray's worker niceness)")
    parser.add_argument("--variants", default="", help=f"of ours, comma-separated: {','.join(VARIANTS)}")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    wall = time.perf_counter()

    import ray
    import torch
    from transformers import AutoTokenizer

    from selfplay.cluster import start_ray
    from selfplay.conversation import prompt_token_ids
    from selfplay.generate.engine import available_cores, detect_device
    from selfplay.generate.pool import EnginePool
    from selfplay.generate.stage import request_seed
    from selfplay.models import resolve_model
    from selfplay.recipe import GenerateConfig

    device = detect_device()
    variants = [v for v in args.variants.split(",") if v] if device == "cpu" else []
    policy = str(resolve_model("tiny:llama", 0))
    tokenizer = AutoTokenizer.from_pretrained(policy)
    prompts = load_prompts(args.prompts)
    sampling = {"n": args.samples, "temperature": 1.0, "top_p": 1.0, "max_tokens": args.max_tokens}
    config = GenerateConfig(samples_per_prompt=args.samples, max_tokens=args.max_tokens, temperature=1.0, top_p=1.0,
                            num_gpus_per_replica=1.0 if device == "cuda" else 0.0, cpu_threads=args.threads)

    start_ray(None, 2 + len(variants))
    pools = {"ours": EnginePool(policy, config, "float32", seed=0)}
    for name in variants:
        pools[f"ours, {name}"] = EnginePool(policy, config.model_copy(update=VARIANTS[name]), "float32", seed=0)
    raw, child = multiprocessing.get_context("spawn").Pipe()
    server = multiprocessing.get_context("spawn").Process(
        target=raw_server, args=(child, device, config.model_dump_json(), policy, args.threads or available_cores()))
    server.start()
    raw_info = raw.recv()

    def run_raw_in_child(*request):
        raw.send(request)
        return raw.recv()
    prompt_ids = [prompt_token_ids(tokenizer, p) for p in prompts]
    seeds = [request_seed(0, 1, i, "train") for i in range(len(prompts))]

    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    warm = {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_tokens": 8}
    for pool in pools.values():
        run_ours(pool, tokenizer, prompts[:4], warm, config, work / "warm.parquet")
    run_raw_in_child(prompt_ids[:4], seeds[:4], warm)
    engine_pids = [pool.stats[0]["pid"] for pool in pools.values()] + [raw_info["pid"]]
    nice = args.nice if args.nice is not None else os.getpriority(os.PRIO_PROCESS, engine_pids[0])
    for pid in [*engine_pids, os.getpid()]:  # after the warm-up: the OpenMP threads exist
        renice(pid, nice)

    load_before = os.getloadavg()
    runs = {name: [] for name in [*pools, "raw"]}
    engine_pid = {name: pool.stats[0]["pid"] for name, pool in pools.items()} | {"raw": raw_info["pid"]}
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            cpu = cpu_seconds(engine_pid[name])
            result = (run_raw_in_child(prompt_ids, seeds, sampling) if name == "raw" else
                      run_ours(pools[name], tokenizer, prompts, sampling, config, work / "samples.parquet"))
            result["cpu_per_wall"] = (cpu_seconds(engine_pid[name]) - cpu) / result["seconds"]
            runs[name].append(result)
            print(f"round {round_ + 1} {name}: {result['tokens']} tokens in {result['seconds']:.2f} s "
                  f"({result['tokens'] / result['seconds']:.0f} tok/s, engine CPU/wall {result['cpu_per_wall']:.2f})",
                  flush=True)
    load_after = os.getloadavg()
    raw.send(None)
    server.join(timeout=60)
    same = all(r["token_ids"] == runs["raw"][0]["token_ids"] for r in runs["ours"] + runs["raw"])

    def rate(name):
        return statistics.median(r["tokens"] / r["seconds"] for r in runs[name])

    def best(name):
        return max(r["tokens"] / r["seconds"] for r in runs[name])

    threads = {name: pool.stats[0]["threads"] for name, pool in pools.items()}
    table = ["| path | median tok/s | fastest tok/s | tokens per call | ratio to raw (median) | ratio to raw "
             "(fastest) | engine CPU/wall (median) | torch threads |", "|---|---|---|---|---|---|---|---|"]
    for name in runs:
        cpu = statistics.median(r["cpu_per_wall"] for r in runs[name])
        table.append(f"| {name} | {rate(name):,.0f} | {best(name):,.0f} | {runs[name][0]['tokens']} | "
                     f"{rate(name) / rate('raw'):.2f}x | {best(name) / best('raw'):.2f}x | {cpu:.2f} | "
                     f"{raw_info['threads'] if name == 'raw' else threads[name]} |")
    ratio = rate("ours") / rate("raw")
    versions = (f"torch {torch.__version__}, vllm {raw_info['vllm']}, ray {ray.__version__}")
    lines = [SECTION, "",
             f"{datetime.date.today()}, `{' '.join(['python scripts/bench_generate.py', *sys.argv[1:]])}` "
             f"on {cpu_name()} ({os.cpu_count()} cores), "
             f"device {device}, Python {platform.python_version()}, {versions}. {args.rounds} rounds in alternating "
             f"order; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (the machine may be shared); "
             f"every engine thread at niceness {nice}.",
             "",
             f"{args.prompts} prompts x K={args.samples} x {args.max_tokens} tokens (temperature 1, top_p 1, "
             f"a seed per prompt), tiny Llama (tiny:llama), float32, the recipe's engine settings for {device}.",
             "", *table, "",
             f"**ours / raw: {ratio:.2f}x** (median tokens/s; {best('ours') / best('raw'):.2f}x fastest to fastest). "
             f"Same token ids from ours and raw in every round: {'yes' if same else 'NO'}.", "",
             "ours: `generate_samples` (chat-template tokenization, long-prompt rule, seeded n=K requests) through "
             "`EnginePool` (one vLLM engine in a Ray actor) and writing samples.parquet; raw: `vllm.LLM.generate` in "
             "a plain child process on pre-tokenized prompts with the same engine options and seeded "
             "`SamplingParams`. Engine start and a warm-up call are left out of both. Engine CPU/wall: CPU seconds "
             "of the engine's process (all threads) per second of the call; with 2 threads on 2 cores, about 2 "
             "means both threads ran at once, about 1 that other jobs kept one of them off a core. Variants: `logprobs` stores "
             "sampled-token log-probs (`generate.store_logprobs: true`, the old default); `1thread` is the engine "
             "on the one OpenMP thread Ray gives a num_cpus=1 actor (`generate.cpu_threads: 1`, the old "
             "behaviour).", "",
             "GPU: not measured. The script runs unchanged where CUDA vLLM is installed (the engine then gets one "
             "GPU and vLLM's own defaults), but the GPU machine lent to this project has no vLLM and cannot "
             "receive one (no package index; the CUDA wheels are too large to carry there)."]
    print("\n".join(lines))
    print(f"\ntotal benchmark wall time {time.perf_counter() - wall:.0f} s")
    if not args.no_write:
        write_section(Path(args.out), SECTION, lines)
        print(f"wrote {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
