"""One DeepSpeed training rank, run as a Ray actor (gloo on CPU, NCCL on GPU).

`TrainerRank.train()` does the whole train stage for its rank, top to bottom:
  1. join the process group (env vars first: DeepSpeed otherwise tries MPI discovery);
  2. load pi_t and compute the reference log-probs once, before any update
     (reference=previous: pi_t itself; reference=initial: pi_0), each rank a strided shard,
     gathered so every rank holds all of them;
  3. build the DeepSpeed engine (ZeRO stage, offload, precision from the recipe) around a
     torch optimizer (RMSprop / AdamW) and a warm-up + linear/cosine LambdaLR;
  4. walk epochs of global batches, micro-batch by micro-batch, calling the named loss with
     whatever per-pair targets its signature asks for (win rates, NLL, ...), saving a
     DeepSpeed checkpoint every `checkpoint_every` steps and resuming from the latest one;
  5. save an HF safetensors checkpoint (ZeRO-3 weights gathered to rank 0).
"""

import inspect
import math
import os
import time
from pathlib import Path


def _init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK="0" if world_size == 1 else str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), LOCAL_WORLD_SIZE=str(world_size))
    import sys

    import deepspeed
    import deepspeed.comm.torch  # noqa: F401  (registers the module patched below)
    import torch

    if not torch.cuda.is_available():
        # The CPU comm backend JIT-builds a shared-memory op (~95 s) that only serves
        # inference all-reduce; training over gloo does not need it. (`deepspeed.comm.torch`
        # as an attribute is the torch package itself, hence sys.modules.)
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False)


def _diverged(what: str, config: dict, lr: float) -> str:
    return (f"training diverged: {what} (lr {lr:g}); lower train.learning_rate ({config['learning_rate']:g}), or "
            f"check train.beta ({config['beta']:g}), train.max_grad_norm and train.loss_options; nothing was saved")


def _load_pairs(pairs_path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(pairs_path).to_pylist()


def _batch_tensors(rows, pad_id, config, device):
    """Chosen rows then rejected rows in one padded batch (one forward pass for both)."""
    from selfplay.train.logps import pad_sequences

    prompts = [r["prompt_token_ids"] for r in rows] * 2
    responses = [r["chosen_token_ids"] for r in rows] + [r["rejected_token_ids"] for r in rows]
    tensors = pad_sequences(prompts, responses, pad_id, config["max_length"], config["max_prompt_length"])
    return [t.to(device) for t in tensors]


class TrainerRank:
    def __init__(self, rank: int, world_size: int, threads: int = 0):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.rank, self.world_size = rank, world_size

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0's answer is every rank's MASTER_ADDR/PORT."""
        import socket

        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), sock.getsockname()[1]

    def connect(self, master_addr: str, master_port: int) -> None:
        _init_distributed(self.rank, self.world_size, master_addr, master_port)

    def _reference_logps(self, model_path, rows, config, pad_id, device):
        """Summed log-probs of chosen and rejected under a frozen model, for all rows."""
        import torch
        import torch.distributed as dist

        from selfplay.models.causal_lm import load_causal_lm
        from selfplay.train.logps import response_logps

        model = load_causal_lm(model_path, self._dtype(config)).to(device).eval()
        mine = {}
        indices = list(range(self.rank, len(rows), self.world_size))
        step = config["micro_batch_size"]
        with torch.no_grad():
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                input_ids, attention, response_mask = _batch_tensors([rows[i] for i in chunk], pad_id, config, device)
                logps = response_logps(model, input_ids, attention, response_mask).cpu().tolist()
                for offset, index in enumerate(chunk):
                    mine[index] = (logps[offset], logps[offset + len(chunk)])
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, mine)
        merged = {k: v for part in gathered for k, v in part.items()}
        del model
        return [merged[i] for i in range(len(rows))]

    @staticmethod
    def _dtype(config):
        import torch

        return torch.bfloat16 if config["precision"] == "bf16" else torch.float32

    def train(self, policy_path: str, reference_path: str, pairs_path: str, out_dir: str, config: dict,
              checkpoint_dir: str | None = None) -> dict:
        import deepspeed
        import torch
        import torch.distributed as dist
        from transformers import AutoTokenizer

        from selfplay.models.causal_lm import load_causal_lm
        from selfplay.train.data import epoch_batches, rank_micro_batches, steps_per_epoch
        from selfplay.train.logps import response_logps
        from selfplay.train.losses import LOSSES, SelfieThreshold, selfie_alpha
        from selfplay.train.schedule import lr_multiplier

        started = time.perf_counter()
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        torch.manual_seed(config["seed"])
        tokenizer = AutoTokenizer.from_pretrained(policy_path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rows = _load_pairs(Path(pairs_path))
        if not rows:
            raise ValueError(f"{pairs_path}: no training pairs (every prompt's samples tied?)")

        reference = self._reference_logps(reference_path, rows, config, pad_id, device)
        reference_seconds = time.perf_counter() - started

        model = load_causal_lm(policy_path, self._dtype(config))
        if config["gradient_checkpointing"]:
            model.gradient_checkpointing_enable()
        gas = config["global_batch_size"] // (config["micro_batch_size"] * self.world_size)
        total_steps = config["epochs"] * steps_per_epoch(len(rows), config["global_batch_size"])
        warmup_steps = int(config["warmup_ratio"] * total_steps)
        optimizer_cls = {"rmsprop": torch.optim.RMSprop, "adamw": torch.optim.AdamW}[config["optimizer"]]
        if config["offload_optimizer"] and config["optimizer"] == "adamw":
            # ZeRO-Offload's fast path: DeepSpeed's CPU Adam (a one-time JIT build, ~2 min on CPU).
            from deepspeed.ops.adam import DeepSpeedCPUAdam as optimizer_cls
        optimizer = optimizer_cls(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, total_steps, warmup_steps, config["scheduler"]))
        zero = {"stage": config["zero_stage"], "stage3_gather_16bit_weights_on_model_save": True}
        if config["offload_optimizer"]:
            zero["offload_optimizer"] = {"device": "cpu"}
        ds_config = {"train_micro_batch_size_per_gpu": config["micro_batch_size"],
                     "gradient_accumulation_steps": gas, "train_batch_size": config["global_batch_size"],
                     "gradient_clipping": config["max_grad_norm"], "zero_optimization": zero,
                     "bf16": {"enabled": config["precision"] == "bf16"}, "steps_per_print": 1 << 30,
                     "zero_allow_untested_optimizer": True, "wall_clock_breakdown": False,
                     # RMSprop has no DeepSpeed CPU kernel: offloaded, the torch one steps the CPU copy
                     "zero_force_ds_cpu_optimizer": False}
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        engine.train()

        loss_fn = LOSSES[config["loss"]]
        loss_params = set(inspect.signature(loss_fn).parameters)
        selfie_threshold = SelfieThreshold() if config["loss"] == "selfie" else None
        history, done_steps = [], 0
        if checkpoint_dir and (Path(checkpoint_dir) / "latest").exists():
            # Resume inside the stage: weights, optimizer, scheduler, RNG and data position.
            _, client = engine.load_checkpoint(checkpoint_dir)
            history, done_steps = client["history"], client["step"]
            torch.set_rng_state(client["torch_rng"])
            if selfie_threshold is not None:
                selfie_threshold.load_state_dict(client["selfie_threshold"])

        step = 0
        for epoch in range(config["epochs"]):
            for global_batch in epoch_batches(len(rows), epoch, config["seed"], config["global_batch_size"]):
                step += 1
                if step <= done_steps:  # the order is a pure function of (seed, epoch): skip what was trained
                    continue
                step_options = dict(config["loss_options"])
                if selfie_threshold is not None:
                    step_options.setdefault("alpha", selfie_alpha(step - 1, total_steps))
                    step_options["threshold"] = selfie_threshold.value
                sums = {"loss": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0, "accuracy": 0.0}
                lr = scheduler.get_last_lr()[0]  # this step's lr (engine.step advances the scheduler)
                for micro in rank_micro_batches(global_batch, self.rank, self.world_size, config["micro_batch_size"]):
                    batch = [rows[i] for i in micro]
                    input_ids, attention, response_mask = _batch_tensors(batch, pad_id, config, device)
                    logps = response_logps(engine, input_ids, attention, response_mask)
                    chosen_logps, rejected_logps = logps[:len(batch)], logps[len(batch):]
                    ref_chosen = torch.tensor([reference[i][0] for i in micro], device=device)
                    ref_rejected = torch.tensor([reference[i][1] for i in micro], device=device)
                    targets = {k: torch.tensor([r[k] for r in batch], device=device, dtype=torch.float32)
                               for k in loss_params if k in batch[0] and batch[0][k] is not None}
                    if "chosen_nll" in loss_params:  # per-example mean token NLL (RPO paper form)
                        targets["chosen_nll"] = -chosen_logps / response_mask[:len(batch)].sum(-1).clamp(min=1)
                    losses = loss_fn(chosen_logps, rejected_logps, ref_chosen, ref_rejected, beta=config["beta"],
                                     **targets, **step_options)
                    engine.backward(losses.mean())
                    engine.step()
                    with torch.no_grad():
                        chosen_reward = (chosen_logps - ref_chosen).detach()
                        rejected_reward = (rejected_logps - ref_rejected).detach()
                        sums["loss"] += losses.detach().sum().item()
                        sums["chosen_reward"] += chosen_reward.sum().item()
                        sums["rejected_reward"] += rejected_reward.sum().item()
                        sums["accuracy"] += (chosen_reward > rejected_reward).float().sum().item()
                # on the training device: NCCL reduces only CUDA tensors
                totals = torch.tensor(list(sums.values()), dtype=torch.float64, device=device)
                dist.all_reduce(totals)
                record = {k: v / config["global_batch_size"] for k, v in zip(sums, totals.tolist())}
                record.update(step=step, epoch=epoch, lr=lr)
                if config["loss"].startswith("sppo"):  # eta = 1/beta makes the raw loss ~1/beta^2
                    record["loss_over_eta_sq"] = record["loss"] * config["beta"] ** 2
                if selfie_threshold is not None:
                    margin = config["beta"] * (record["chosen_reward"] - record["rejected_reward"])
                    record.update(alpha=step_options["alpha"], threshold=selfie_threshold.update(margin))
                if not math.isfinite(record["loss"]):  # deterministic: the stage fails, nothing is saved
                    raise FloatingPointError(_diverged(f"the loss of step {step} (epoch {epoch}) is {record['loss']}",
                                                       config, lr))
                history.append(record)
                if checkpoint_dir and config["checkpoint_every"] and step % config["checkpoint_every"] == 0 \
                        and step < total_steps:
                    client = {"step": step, "history": history, "torch_rng": torch.get_rng_state(),
                              "selfie_threshold": selfie_threshold.state_dict() if selfie_threshold else None}
                    engine.save_checkpoint(checkpoint_dir, tag=f"step{step:06d}", client_state=client)

        self._check_finite_weights(engine, config, device, scheduler.get_last_lr()[0])
        self._save(engine, model, tokenizer, policy_path, Path(out_dir))
        dist.barrier()
        return {"history": history, "total_steps": total_steps, "warmup_steps": warmup_steps,
                "gradient_accumulation_steps": gas, "num_pairs": len(rows),
                "reference_seconds": reference_seconds, "train_seconds": time.perf_counter() - started}

    def _check_finite_weights(self, engine, config, device, lr) -> None:
        """Each rank checks the weights it holds (under ZeRO-3 its partition); all agree, then raise."""
        import torch
        import torch.distributed as dist

        bad = next((name for name, param in engine.module.named_parameters()
                    if not torch.isfinite(getattr(param, "ds_tensor", param)).all()), None)
        flag = torch.tensor([0.0 if bad is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            raise FloatingPointError(_diverged(f"weight {bad or '(on another rank)'} is not finite after training",
                                               config, lr))

    def _save(self, engine, model, tokenizer, policy_path, out_dir):
        import shutil

        from selfplay.models.causal_lm import state_dict_for_save

        if engine.zero_optimization_stage() == 3:
            state = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
        else:
            state = engine.module.state_dict() if self.rank == 0 else None
        if self.rank != 0:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        # A copy (save_pretrained empties the dict it gets) without tied aliases (causal_lm.py).
        model.save_pretrained(out_dir, state_dict=state_dict_for_save(model, state), safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        for extra in ("generation_config.json", "selfplay_tiny.json"):
            if (Path(policy_path) / extra).exists():
                shutil.copy(Path(policy_path) / extra, out_dir / extra)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
