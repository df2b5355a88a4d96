"""LoRA vs full fine-tuning on the same recipe: train-stage time, checkpoint size and the engine's
policy switch, written to docs/benchmarks.md.

One Ray session, one kept rank (TrainingRanks, DeepSpeed ZeRO-0, gloo, fp32), the same DPO stage on
the same synthetic pairs and tiny Llama as scripts/bench_train.py, twice: full fine-tuning and
train.lora (r 8 on every projection). Each stage reads its policy from disk (digest None), so
both pay the same load; the first stage run warms the rank's imports and is left out (a third,
discarded stage runs first). Reported: the stage's train_seconds as the rank measures it, the
size of the saved checkpoint folder (under train.lora the adapter, its config, the tokenizer and
the base's digest; selfplay.models.adapter), and the seconds a vLLM engine (CPU, built on the
base with LoRA enabled, as a train.lora run builds it) takes to switch to each checkpoint:
`reload_weights` for the full one, a LoRARequest for the adapter.

    python scripts/bench_lora.py [--pairs 128] [--batch-size 8] [--no-write]
"""

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench_report import cpu_name, write_section  # scripts/ is on sys.path when run as a script
from bench_train import BETA, MAX_GRAD_NORM, synthetic_pairs

SECTION = "## LoRA vs full fine-tuning (scripts/bench_lora.py)"
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import ray
    from transformers import AutoTokenizer

    from selfplay.cluster import start_ray
    from selfplay.models.tiny_policy import build_tiny_policy
    from selfplay.recipe import TrainConfig
    from selfplay.train.ranks import TrainingRanks

    work = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    policy = build_tiny_policy(work / "policy", seed=0, hidden_size=args.hidden, num_layers=args.layers)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    special = set(tokenizer.all_special_ids)
    synthetic_pairs(work / "pairs.parquet", [i for i in range(len(tokenizer)) if i not in special], args.pairs, 32, 64)
    base = dict(loss="dpo", beta=BETA, learning_rate=1e-5, optimizer="adamw", scheduler="linear", warmup_ratio=0.0,
                epochs=1, global_batch_size=args.batch_size, micro_batch_size=args.batch_size, max_length=1024,
                max_prompt_length=512, zero_stage=0, max_grad_norm=MAX_GRAD_NORM, seed=0)
    start_ray(None, 1)
    ranks = TrainingRanks(1, 0.0)
    results = {}
    try:
        for key, extra in (("warm-up", {}), ("full", {}), ("lora", {"lora": LORA})):
            started = time.perf_counter()
            result = ranks.train((str(policy), None), (str(policy), None), str(work / "pairs.parquet"),
                                 str(work / key), TrainConfig(**base, **extra))
            results[key] = {"train_seconds": result["train_seconds"], "call_seconds": time.perf_counter() - started,
                            "bytes": folder_bytes(work / key), "final_loss": result["history"][-1]["loss"]}
            print(key, results[key], flush=True)
    finally:
        ranks.shutdown()
        ray.shutdown()
    for key, seconds in switch_seconds(policy, work).items():
        results[key]["switch_seconds"] = seconds
    full, lora = results["full"], results["lora"]
    lines = [SECTION, "",
             f"{datetime.date.today()}, {cpu_name()}, {os.cpu_count()} cores; {args.pairs} pairs, batch "
             f"{args.batch_size}, DPO, AdamW, fp32, 1 rank ZeRO-0; tiny Llama hidden {args.hidden}, {args.layers} "
             f"layers; LoRA r {LORA['r']} alpha {LORA['alpha']:g} on {', '.join(LORA['target_modules'])}. "
             "Each stage reads its policy from disk on a warmed rank.", "",
             "| stage | train_seconds | checkpoint | engine switch (s) | last loss |", "|---|---|---|---|---|",
             *(f"| {key} | {r['train_seconds']:.2f} | {r['bytes'] / 2**20:.2f} MiB | {r['switch_seconds']:.3f} | "
               f"{r['final_loss']:.4f} |" for key, r in (("full fine-tuning", full), ("train.lora", lora))), "",
             f"- LoRA / full: train stage {lora['train_seconds'] / full['train_seconds']:.2f}x, checkpoint "
             f"{lora['bytes'] / full['bytes']:.3f}x (the adapter alone, with the tokenizer and the base's digest), "
             f"engine switch {lora['switch_seconds'] / full['switch_seconds']:.2f}x (a LoRARequest instead of "
             "reload_weights)."]
    print("\n".join(lines))
    if not args.no_write:
        write_section(Path(args.out), SECTION, lines)
    return 0


def switch_seconds(base: Path, work: Path) -> dict[str, float]:
    """Seconds a CPU engine on the base, with LoRA enabled, takes to load each stage's checkpoint."""
    from selfplay.generate.engine import VLLMEngine
    from selfplay.recipe import GenerateConfig

    engine = VLLMEngine(str(base), GenerateConfig(max_model_len=256, max_tokens=16, kv_cache_gib=0.25), seed=0,
                        device="cpu", lora_rank=LORA["r"])
    return {key: engine.load_policy(str(work / key)) for key in ("lora", "full")}  # the adapter first: base held


if __name__ == "__main__":
    sys.exit(main())
