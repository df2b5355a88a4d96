"""Training throughput: our train stage vs TRL's DPOTrainer vs a plain torch loop, written to docs/benchmarks.md.

All three train the same DPO step on the same machine, in turn, once each:
  - ours:  `selfplay.train.ranks.TrainingRanks` (1 Ray actor, DeepSpeed ZeRO-0, gloo), loss="dpo", two
           stages as a run does them: the first on ranks started for it, the next on the same ranks,
           which train the weights they hold (train.keep_ranks);
  - TRL:   trl 1.16 `DPOTrainer` in this process (precompute_ref_log_probs=True, like ours);
  - plain: a hand-written torch loop in this process (forward, DPO loss, backward, clip, step).
Same model (a tiny Llama built here, hidden 256, 4 layers, vocab 2048), same pre-tokenized pairs
(random token ids, fixed lengths so every batch has the same shape in all three), same batch size
(one micro-batch per optimizer step, no accumulation), fp32, AdamW (torch.optim.AdamW, betas
0.9/0.999, eps 1e-8, weight decay 0), linear LR schedule without warm-up, gradient clipping at 1.0,
beta 0.1, the same number of steps (1 epoch), torch intra-op threads = the machine's cores.

What is measured:
  - steady state: wall time from the end of optimizer step 1 to the end of the last step (each
    step: collate, forward on chosen+rejected, loss, backward, clip, optimizer and LR step, and
    whatever per-step bookkeeping each does), so model load, Ray actor start, DeepSpeed init,
    reference log-probs and step 1's first-call costs are left out. Throughput = pairs / second.
    Ours is timed inside the Ray actor by wrapping the DeepSpeed engine's `step` (timestamp at each
    gradient-accumulation boundary) through a subclass of TrainerRank; trainer.py is unchanged.
  - end to end: the wall time of the whole stage as a caller sees it: for ours the first stage
    (actor start and its imports, DeepSpeed init, model load, reference log-probs, training, HF
    save; the next stage on kept ranks: no start, no load); for TRL building the trainer from a
    loaded model (reference log-probs included), train() and save_model, plus the model load; for
    plain the same steps by hand. Ray start-up (once per run of the pipeline) is reported apart;
    TRL's own import is reported apart too (this process had already imported torch and
    transformers for all three).

The machine may be shared with other jobs: the load average is printed with the results, and
--wait-idle waits for an idle CPU before each trainer. Ray runs its workers at niceness 15, so TRL
and the plain loop run at niceness 15 too (--nice), for equal footing against other jobs.

    python scripts/bench_train.py [--pairs 128] [--batch-size 8] [--wait-idle 300] [--no-write]
"""

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
from bench_report import cpu_name, write_section  # scripts/ is on sys.path when run as a script

SECTION = "## Training (scripts/bench_train.py)"
BETA, LR, MAX_GRAD_NORM = 0.1, 1e-5, 1.0


def synthetic_pairs(path: Path, vocab: list[int], num_pairs: int, prompt_len: int, response_len: int, seed: int = 0):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    ids = lambda n: rng.choice(vocab, size=n).tolist()
    rows = [{"prompt_token_ids": ids(prompt_len), "chosen_token_ids": ids(response_len),
             "rejected_token_ids": ids(response_len)} for _ in range(num_pairs)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


def cpu_idle_fraction(seconds: float = 2.0) -> float:
    """Share of the machine's CPU time that was idle over the next `seconds` (from /proc/stat)."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total
    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_for_idle(limit_seconds: float, threshold: float = 0.9) -> float:
    """Wait (at most limit_seconds) until other jobs leave the CPU idle; returns the idle share seen."""
    deadline = time.monotonic() + limit_seconds
    while True:
        idle = cpu_idle_fraction()
        if idle >= threshold or time.monotonic() > deadline:
            return idle


def stamp() -> tuple[float, float]:
    """(wall clock, CPU seconds of this process, all its threads)."""
    return time.perf_counter(), time.process_time()


def steady(stamps: list[tuple[float, float]], batch_size: int) -> dict:
    """Steps 2..N from per-step end stamps: pairs/s over the wall span, median / fastest / slowest
    step wall time, and CPU seconds per step (all threads of the training process)."""
    wall, cpu = np.array([s[0] for s in stamps]), np.array([s[1] for s in stamps])
    intervals = np.diff(wall)
    return {"steps": len(stamps), "steady_seconds": float(wall[-1] - wall[0]),
            "pairs_per_s": batch_size * len(intervals) / float(wall[-1] - wall[0]),
            "median_step_s": float(np.median(intervals)), "min_step_s": float(np.min(intervals)),
            "max_step_s": float(np.max(intervals)),
            "cpu_per_step_s": float(cpu[-1] - cpu[0]) / len(intervals)}


# ---------------------------------------------------------------- ours (TrainingRanks, Ray + DeepSpeed)

def _timed_trainer_class():
    from selfplay.train.trainer import TrainerRank

    class TimedTrainerRank(TrainerRank):
        """TrainerRank that timestamps each optimizer step (end of engine.step at an accumulation boundary)."""

        def train(self, *args, **kwargs):
            import deepspeed
            import torch

            stamps, original = [], deepspeed.initialize

            def initialize(*a, **k):
                engine, *rest = original(*a, **k)
                step = engine.step

                def timed_step(*sa, **sk):
                    boundary = engine.is_gradient_accumulation_boundary()
                    out = step(*sa, **sk)
                    if boundary:
                        stamps.append((time.perf_counter(), time.process_time()))
                    return out

                engine.step = timed_step
                return (engine, *rest)

            deepspeed.initialize = initialize
            try:
                result = super().train(*args, **kwargs)
            finally:
                deepspeed.initialize = original
            result.update(step_stamps=stamps, torch_threads=torch.get_num_threads(),
                          omp_num_threads=os.environ.get("OMP_NUM_THREADS"), niceness=os.nice(0))
            return result

    return TimedTrainerRank


def bench_ours(policy: Path, pairs_path: Path, out_dir: Path, batch_size: int, ray_seconds: float) -> dict:
    """Two train stages on the same ranks, as a run does: the first on ranks started for it (their
    start is in its end-to-end time), the next on the kept ranks from the weights they hold."""
    import ray

    import selfplay.train.ranks as stage
    from selfplay.recipe import TrainConfig

    config = TrainConfig(loss="dpo", beta=BETA, learning_rate=LR, optimizer="adamw", weight_decay=0.0,
                         scheduler="linear", warmup_ratio=0.0, epochs=1, global_batch_size=batch_size,
                         micro_batch_size=batch_size, max_length=1024, max_prompt_length=512, world_size=1,
                         zero_stage=0, precision="fp32", max_grad_norm=MAX_GRAD_NORM, seed=0)
    original = stage.TrainerRank
    stage.TrainerRank = _timed_trainer_class()
    results = {}
    try:
        started = time.perf_counter()
        ranks = stage.TrainingRanks(1, 0.0)
        results["ours"] = ranks.train((str(policy), "pi0"), (str(policy), "pi0"), str(pairs_path),
                                      str(out_dir / "first"), config)
        results["ours"]["e2e"] = time.perf_counter() - started
        ranks.holds(str(out_dir / "first"), "pi1")
        started = time.perf_counter()
        results["ours_kept"] = ranks.train((str(out_dir / "first"), "pi1"), (str(out_dir / "first"), "pi1"),
                                           str(pairs_path), str(out_dir / "second"), config)
        results["ours_kept"]["e2e"] = time.perf_counter() - started
        assert results["ours_kept"]["ranks"]["policy_from"] == "memory"
        ranks.shutdown()
    finally:
        stage.TrainerRank = original
        ray.shutdown()
    names = {"ours": "ours, first stage (ranks started for it)", "ours_kept": "ours, next stage (kept ranks, policy in memory)"}
    return {key: {"name": names[key], "e2e_seconds": result["e2e"], "extra_seconds": ray_seconds,
                  "extra": f"Ray start {ray_seconds:.1f} s", "threads": result["torch_threads"],
                  "omp": result["omp_num_threads"], "nice": result["niceness"],
                  "final_loss": result["history"][-1]["loss"], "reference_seconds": result["reference_seconds"],
                  **steady(result["step_stamps"], batch_size)} for key, result in results.items()}


# ---------------------------------------------------------------- TRL DPOTrainer

def bench_trl(policy: Path, rows: list[dict], out_dir: Path, batch_size: int) -> dict:
    started = time.perf_counter()
    import trl
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    import_seconds = time.perf_counter() - started

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class PreTokenizedDPOTrainer(DPOTrainer):
        # Our pairs are token ids already (TRL 1.16 always re-tokenizes text in `_prepare_dataset`, a
        # private method; the other trainers get the same ids, so no tokenization anywhere).
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    class Stamps(TrainerCallback):
        def __init__(self):
            self.stamps = []

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(stamp())

    dataset = Dataset.from_list([{"prompt_ids": r["prompt_token_ids"], "chosen_ids": r["chosen_token_ids"],
                                  "rejected_ids": r["rejected_token_ids"]} for r in rows])
    args = DPOConfig(output_dir=str(out_dir), per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
                     num_train_epochs=1, learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0,
                     optim="adamw_torch", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                     max_grad_norm=MAX_GRAD_NORM, beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=True,
                     precompute_ref_batch_size=batch_size, max_length=1024, bf16=False, fp16=False, use_cpu=True,
                     save_strategy="no", report_to="none", logging_steps=10 ** 6, seed=0, dataloader_num_workers=0,
                     disable_tqdm=True)
    callback = Stamps()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    trainer = PreTokenizedDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                     callbacks=[callback])
    output = trainer.train()
    trainer.save_model(str(out_dir / "policy"))
    e2e = time.perf_counter() - started
    return {"name": f"TRL {trl.__version__} DPOTrainer", "e2e_seconds": e2e, "extra_seconds": import_seconds,
            "extra": f"import trl {import_seconds:.1f} s", "threads": torch.get_num_threads(), "nice": os.nice(0),
            "omp": os.environ.get("OMP_NUM_THREADS"), "final_loss": float(output.training_loss),
            **steady(callback.stamps, batch_size)}


# ---------------------------------------------------------------- plain torch loop

def bench_plain(policy: Path, rows: list[dict], out_dir: Path, batch_size: int) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from selfplay.train.data import epoch_batches

    def collate(batch):
        sequences = [r["prompt_token_ids"] + r["chosen_token_ids"] for r in batch] + \
                    [r["prompt_token_ids"] + r["rejected_token_ids"] for r in batch]
        starts = [len(r["prompt_token_ids"]) for r in batch] * 2
        width = max(len(s) for s in sequences)
        input_ids = torch.zeros((len(sequences), width), dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        response = torch.zeros_like(input_ids)
        for i, (sequence, start) in enumerate(zip(sequences, starts)):
            input_ids[i, :len(sequence)] = torch.tensor(sequence)
            attention[i, :len(sequence)] = 1
            response[i, start:len(sequence)] = 1
        return input_ids, attention, response

    def logps(model, input_ids, attention, response):
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
        token = torch.log_softmax(logits.float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        return (token * response[:, 1:]).sum(-1)

    started = time.perf_counter()
    batches = epoch_batches(len(rows), 0, 0, batch_size)
    reference_model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    reference = []
    with torch.no_grad():
        for batch in batches:
            out = logps(reference_model, *collate([rows[i] for i in batch]))
            reference.append((out[:len(batch)], out[len(batch):]))
    del reference_model
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / len(batches)))
    stamps = []
    for batch, (ref_chosen, ref_rejected) in zip(batches, reference):
        out = logps(model, *collate([rows[i] for i in batch]))
        margin = (out[:len(batch)] - ref_chosen) - (out[len(batch):] - ref_rejected)
        loss = -F.logsigmoid(BETA * margin).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        stamps.append(stamp())
    model.save_pretrained(out_dir, safe_serialization=True)
    e2e = time.perf_counter() - started
    return {"name": "plain torch loop", "e2e_seconds": e2e, "extra_seconds": 0.0, "extra": "",
            "threads": torch.get_num_threads(), "nice": os.nice(0), "omp": os.environ.get("OMP_NUM_THREADS"),
            "final_loss": loss.item(), **steady(stamps, batch_size)}


# ---------------------------------------------------------------- report

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step (one micro-batch)")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--order", default="plain,trl,ours", help="which to run, in this order")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))
    parser.add_argument("--nice", type=int, default=int(os.environ.get("RAY_worker_niceness", 15)),
                        help="niceness for TRL and the plain loop (default: Ray's worker niceness, 15)")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="before each trainer, wait up to this many seconds for the CPU to be >= 90%% idle "
                             "(for shared machines)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import AutoTokenizer

    from selfplay.models.tiny_policy import build_tiny_policy

    wall = time.perf_counter()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    policy = build_tiny_policy(work / "policy", seed=0, hidden_size=args.hidden, num_layers=args.layers)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    rows = synthetic_pairs(work / "pairs.parquet", vocab, args.pairs, args.prompt_len, args.response_len)
    num_params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(policy).parameters())

    ray_seconds = 0.0
    if "ours" in args.order.split(","):
        from selfplay.cluster import start_ray

        started = time.perf_counter()
        start_ray(None, 1)
        ray_seconds = time.perf_counter() - started
    if args.nice:
        # Ray runs its workers, our trainer among them, at niceness 15 (RAY_worker_niceness): on a shared
        # machine a nice-0 baseline would get more CPU than ours. Raise this process (which runs TRL and
        # the plain loop) to the same niceness, after Ray started so its raylet keeps its own.
        os.nice(max(0, args.nice - os.nice(0)))
    runners = {"plain": lambda: bench_plain(policy, rows, work / "plain", args.batch_size),
               "trl": lambda: bench_trl(policy, rows, work / "trl", args.batch_size),
               "ours": lambda: bench_ours(policy, work / "pairs.parquet", work / "ours", args.batch_size, ray_seconds)}
    results, idle = {}, {}
    for key in args.order.split(","):
        if args.wait_idle and Path("/proc/stat").exists():
            idle[key] = wait_for_idle(args.wait_idle)
        print(f"running {key} ...", flush=True)
        result = runners[key]()
        results.update(result if key == "ours" else {key: result})
        print(f"  {result}", flush=True)
    load_after = os.getloadavg()

    seq = args.prompt_len + args.response_len
    header = (f"{args.pairs} pairs, batch {args.batch_size} pairs/step ({2 * args.batch_size} sequences of {seq} "
              f"tokens: prompt {args.prompt_len} + response {args.response_len}), {args.pairs // args.batch_size} "
              f"steps (1 epoch), DPO sigmoid beta {BETA}, fp32, AdamW lr {LR} linear, clip {MAX_GRAD_NORM}; "
              f"tiny Llama hidden {args.hidden}, {args.layers} layers, {num_params / 1e6:.1f}M parameters.")
    table = ["| trainer | steady pairs/s (mean) | pairs/s at median step | median step (s) | fastest step (s) | "
             "slowest step (s) | CPU s per step | end-to-end stage (s) | of which not steps 2..N (s) | "
             "not in end-to-end | torch threads (OMP_NUM_THREADS), nice | last loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    disturbed = [r["name"] for r in results.values() if r["median_step_s"] > 1.3 * r["min_step_s"]]
    for r in results.values():
        name = r["name"] + (" (disturbed)" if r["name"] in disturbed else "")
        table.append(f"| {name} | {r['pairs_per_s']:.2f} | {args.batch_size / r['median_step_s']:.2f} | "
                     f"{r['median_step_s']:.3f} | {r['min_step_s']:.3f} | {r['max_step_s']:.3f} | "
                     f"{r['cpu_per_step_s']:.3f} | {r['e2e_seconds']:.1f} | "
                     f"{r['e2e_seconds'] - r['steady_seconds']:.1f} | "
                     f"{r['extra'] or '-'} | {r['threads']} ({r['omp'] or 'unset'}), {r['nice']} | "
                     f"{r['final_loss']:.4f} |")
    ratios = []
    for mine, mine_label in (("ours", "ours (first stage)"), ("ours_kept", "ours (next stage, kept ranks)")):
        for other, label in (("trl", "TRL"), ("plain", "plain")):
            if mine in results and other in results:
                ours, theirs = results[mine], results[other]
                ratios.append(f"- {mine_label} / {label}: steady throughput "
                              f"{ours['pairs_per_s'] / theirs['pairs_per_s']:.2f}x, "
                              f"median step time {ours['median_step_s'] / theirs['median_step_s']:.2f}x, "
                              f"fastest step time {ours['min_step_s'] / theirs['min_step_s']:.2f}x, "
                              f"CPU s per step {ours['cpu_per_step_s'] / theirs['cpu_per_step_s']:.2f}x, "
                              f"end-to-end time {ours['e2e_seconds'] / theirs['e2e_seconds']:.2f}x")
    versions = (f"torch {torch.__version__}, transformers {transformers.__version__}, "
                f"deepspeed {__import__('deepspeed').__version__}, ray {__import__('ray').__version__}, "
                f"trl {__import__('trl').__version__}")
    lines = [SECTION, "",
             f"{datetime.date.today()}, `python scripts/bench_train.py` on {cpu_name()} ({os.cpu_count()} cores), "
             f"Python {platform.python_version()}, {versions}. One run each, in the order {args.order}; load average "
             f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (the machine may be shared)"
             + ("; CPU idle just before each: " + ", ".join(f"{k} {v:.0%}" for k, v in idle.items()) if idle else "")
             + ".", "",
             header, "", *table, "", *ratios, "",
             *(["(disturbed): its median step took over 1.3x its fastest, i.e. other jobs took the CPU during "
                "the run (the steps are identical work); compare the fastest steps, or run again.", ""]
               if disturbed else []),
             "Steady pairs/s: pairs trained from the end of optimizer step 1 to the end of the last step, over that "
             "wall time (model load, Ray actor start, DeepSpeed init and reference log-probs excluded). On a shared "
             "machine the median and fastest step times are the least disturbed by other jobs. CPU s per "
             "step: CPU time of the training process (all its threads) over the same steps, per step: twice the "
             "step time means both cores were busy (when other jobs take a core, idle OpenMP threads spin and it "
             "grows too). Ray runs its workers at "
             "niceness 15, so TRL and the plain loop run at 15 too (`--nice`). "
             "End-to-end: the whole stage as its caller waits for it, and the part of it that is not steps 2..N "
             "(start-up, reference log-probs, step 1, save: a fixed cost per stage that does not grow with the "
             "data). It covers, for ours' first stage: actor start and "
             "imports, DeepSpeed init, the policy load, reference log-probs, training, HF save (the next stage "
             "on the kept ranks: the same without the start and the load); TRL: "
             "model load, DPOTrainer construction with its reference precompute, train(), save_model; plain: the "
             "same by hand. All three precompute reference log-probs once before training (TRL: "
             "`precompute_ref_log_probs=True`). Ours is timed inside its Ray actor (a TrainerRank subclass wraps "
             "the DeepSpeed engine's step); TRL with an on_step_end callback. The plain loop walks our batch order "
             "(`selfplay.train.data.epoch_batches`), so its losses equal ours up to float rounding; TRL shuffles its "
             "own way (same shapes: every sequence has the same length)."]
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal benchmark wall time {time.perf_counter() - wall:.0f} s")
    if not args.no_write:
        write_section(Path(args.out), SECTION, lines)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
