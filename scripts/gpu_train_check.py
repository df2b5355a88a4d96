"""The train stage on a CUDA GPU, checked against a CPU run's recorded history (no Ray needed).

CI and this project's development machines have no GPU, so the NCCL/CUDA path of
`selfplay.train.trainer.TrainerRank` is checked here, on a lent GPU machine, in two steps:

    # on a CPU machine, from any finished run (e.g. the quickstart): copy what the GPU needs
    python scripts/gpu_train_check.py prepare runs/quickstart-cpu /tmp/gpu-train-case
    # on the GPU machine: train iteration 1 again with several ZeRO stages and precisions
    python scripts/gpu_train_check.py check /tmp/gpu-train-case

`prepare` copies iteration 1's pairs, its input policy and the train config, and the loss
history the CPU run recorded. `check` runs one TrainerRank per setting, each in a fresh
process (a process group per process), and compares every step's loss with the CPU history.
Step 1 says little (policy = reference, so the SPPO loss there depends only on the targets);
from step 2 on the loss depends on every update before it. fp32 on the GPU must stay within
1e-3 of the CPU at every step (ZeRO-3 vs ZeRO-0 on the CPU: 2e-5); bf16 is reported, not
gated, beyond finite losses. It exits 1 if a setting fails, a loss is not finite, or fp32
drifts further.
"""

import argparse
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {  # name: (zero stage, precision)
    "zero0-fp32": (0, "fp32"),
    "zero3-fp32": (3, "fp32"),
    "zero2-bf16": (2, "bf16"),
    "zero3-bf16": (3, "bf16"),
}


def prepare(run_dir: Path, case: Path) -> None:
    train = run_dir / "iter-001" / "train"
    manifest = json.loads((train / "manifest.json").read_text())
    if manifest["reference"]["rule"] != "previous":
        raise SystemExit(f"{train}: reference rule {manifest['reference']['rule']!r}; this check needs 'previous'")
    if case.exists():
        shutil.rmtree(case)
    case.mkdir(parents=True)
    shutil.copytree(manifest["reference"]["path"], case / "policy")  # iteration 1 trains pi_0 against itself
    shutil.copy(run_dir / "iter-001" / "pairs" / "pairs.parquet", case / "pairs.parquet")
    shutil.copy(train / "history.jsonl", case / "cpu_history.jsonl")
    (case / "config.json").write_text(json.dumps(manifest["config"], indent=1))
    print(f"wrote {case} from {train}")


def train_once(case: Path, name: str, out: Path) -> None:
    """One setting in this process: a 1-rank process group (NCCL on CUDA) and the train stage."""
    from selfplay.recipe import TrainConfig
    from selfplay.train.settings import TrainSettings
    from selfplay.train.trainer import TrainerRank

    zero_stage, precision = SETTINGS[name]
    config = {**json.loads((case / "config.json").read_text()), "zero_stage": zero_stage, "precision": precision}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rank = TrainerRank(0, 1)
    rank.connect(("127.0.0.1", port))
    result = rank.train(str(case / "policy"), str(case / "policy"), str(case / "pairs.parquet"),
                        str(out / name / "policy"), TrainSettings.of(TrainConfig.model_validate(config)))
    rank.shutdown()
    (out / name / "result.json").write_text(json.dumps(result))


def check(case: Path, out: Path, settings: list[str]) -> int:
    import torch

    cpu = [json.loads(line) for line in (case / "cpu_history.jsonl").read_text().splitlines()]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no CUDA device)"
    print(f"device: {device}; torch {torch.__version__}; {len(cpu)} CPU steps to match")
    rows, failed = [], False
    for name in settings:
        precision = SETTINGS[name][1]
        (out / name).mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "one", str(case), name, str(out)],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            print(f"{name}: FAILED (exit {proc.returncode}): {' | '.join(tail)}")
            rows.append(f"| {name} | failed (exit {proc.returncode}) | | | | {seconds:.1f} |")
            failed = True
            continue
        result = json.loads((out / name / "result.json").read_text())
        gpu = [step["loss"] for step in result["history"]]
        diffs = [abs(g - c["loss"]) / max(abs(c["loss"]), 1e-12) for g, c in zip(gpu, cpu)]
        finite = all(math.isfinite(x) for x in gpu)
        close = precision != "fp32" or max(diffs) < 1e-3
        ok = finite and close and len(gpu) == len(cpu)
        failed |= not ok
        print(f"{name}: {'ok' if ok else 'FAILED'}; loss {gpu[0]:.4f} -> {gpu[-1]:.4f} (CPU {cpu[0]['loss']:.4f} -> "
              f"{cpu[-1]['loss']:.4f}); relative difference step 2 {diffs[1]:.1e}, max {max(diffs):.1e}; "
              f"train {result['train_seconds']:.1f} s, process {seconds:.1f} s")
        rows.append(f"| {name} | {gpu[0]:.4f} -> {gpu[-1]:.4f} | {diffs[1]:.1e} | {max(diffs):.1e} | "
                    f"{result['train_seconds']:.1f} | {seconds:.1f} |")
    table = ["| setting | loss first -> last | rel. diff step 2 | rel. diff max | train s | process s |",
             "| --- | --- | --- | --- | --- | --- |", *rows]
    summary = [f"device: {device}, torch {torch.__version__}",
               f"CPU history: loss {cpu[0]['loss']:.4f} -> {cpu[-1]['loss']:.4f} over {len(cpu)} steps", "", *table]
    (out / "train_check.md").write_text("\n".join(summary) + "\n")
    print("\n".join(table))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="copy iteration 1's train inputs and history from a finished CPU run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("case", type=Path)
    c = sub.add_parser("check", help="train each setting on this machine and compare with the CPU history")
    c.add_argument("case", type=Path)
    c.add_argument("--out", type=Path, default=Path("/tmp/gpu-train-check"))
    c.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    o = sub.add_parser("one", help=argparse.SUPPRESS)
    o.add_argument("case", type=Path)
    o.add_argument("name", choices=list(SETTINGS))
    o.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.run_dir, args.case)
    elif args.command == "check":
        unknown = set(args.settings.split(",")) - set(SETTINGS)
        if unknown:
            parser.error(f"--settings: unknown {', '.join(sorted(unknown))}; allowed: {', '.join(SETTINGS)}")
        return check(args.case, args.out, args.settings.split(","))
    else:
        train_once(args.case, args.name, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
