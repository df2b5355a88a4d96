"""One DeepSpeed training rank, run as a Ray actor (gloo on CPU, NCCL on GPU).

A rank lives for the run (selfplay.train.ranks): it joins the process group once (`connect`;
env vars first: DeepSpeed otherwise tries MPI discovery), and `TrainerRank.train()` does one
train stage for its rank, in four parts:
  1. setup: read the tokenizer and the pairs; the policy from disk, or from the copy of the
     weights this rank trained in its last stage (`from_memory`: the driver checked the digest);
     seed torch;
  2. reference log-probs, once, before any update (reference=previous: pi_t itself, so the
     policy model scores them; reference=initial: pi_0, loaded), each rank a strided shard,
     gathered so every rank holds all; none at all, and no reference model, for a loss whose spec
     says it needs no reference (TPO, ASFT); then the DeepSpeed engine (ZeRO stage, offload,
     precision from the settings) around a torch optimizer (RMSprop / AdamW) and a warm-up +
     linear/cosine LambdaLR;
  3. steps: epochs of global batches, micro-batch by micro-batch; the loss is whatever
     `TrainSettings.loss` names in `selfplay.methods.LOSSES`, and its spec says which responses
     of each pair it scores, and which pair columns, batch-derived values and per-step state it
     takes (no loss is named here). A
     DeepSpeed checkpoint every `checkpoint_every` steps; a stage resumes from the latest one;
  4. save: an HF safetensors checkpoint (ZeRO-3 weights gathered to rank 0); under train.lora
     only the adapter, with its base's path and digest (selfplay.models.adapter); under ZeRO 0-2
     each rank keeps a CPU copy of what it saved (the adapter's tensors under train.lora), the
     next stage's `from_memory` policy.
Under train.lora the policy is always the base plus one adapter: a stage continues the entering
policy's adapter, or starts a fresh one (seeded) when the entering policy is the base.
Settings come as a frozen `TrainSettings` (selfplay.train.settings).
"""

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from selfplay.train.settings import TrainSettings


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


def _diverged(what: str, settings: TrainSettings, lr: float) -> str:
    return (f"training diverged: {what} (lr {lr:g}); lower train.learning_rate ({settings.learning_rate:g}), or "
            f"check train.beta ({settings.beta:g}), train.max_grad_norm and train.loss_options; nothing was saved")


def _with_lora(model, lora: tuple):
    """The policy with a fresh LoRA adapter (peft) on its `target_modules`: only the adapter trains.
    Its B matrices start at zero, so before the first update it computes what the policy computes."""
    from peft import LoraConfig, get_peft_model

    r, alpha, dropout, target_modules = lora
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=list(target_modules), bias="none"))


def _check_same_adapter(policy_path: str, lora: tuple) -> None:
    """A stage continues the entering adapter, so train.lora must describe that adapter."""
    from selfplay.models.adapter import lora_mismatch

    r, alpha, _, target_modules = lora
    mismatch = lora_mismatch(policy_path, r, alpha, target_modules)
    if mismatch:
        raise ValueError(mismatch)


def _load_pairs(pairs_path: Path, spec, loss: str) -> list[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(pairs_path)
    if table.num_rows == 0:
        raise ValueError(f"{pairs_path}: no training pairs (every prompt's samples tied?)")
    needed = [*spec.pair_columns, *(f"{response}_token_ids" for response in spec.responses)]
    missing = [name for name in needed if name not in table.column_names]
    if missing:  # `selfplay validate` checks the pair builder; this catches a hand-made pairs file
        raise ValueError(f"{pairs_path}: no column {missing[0]!r}, which train.loss {loss!r} needs")
    return table.to_pylist()


def _batch_tensors(rows, responses: tuple[str, ...], pad_id, settings: TrainSettings, device):
    """Each response's rows in turn (chosen, then rejected, then any other the loss scores) in one
    padded batch: one forward pass for all."""
    from selfplay.models.logps import pad_sequences

    prompts = [r["prompt_token_ids"] for r in rows] * len(responses)
    responses = [r[f"{name}_token_ids"] for name in responses for r in rows]
    tensors = pad_sequences(prompts, responses, pad_id, settings.max_length, settings.max_prompt_length)
    return [t.to(device) for t in tensors]


def _dtype(settings: TrainSettings):
    import torch

    return torch.bfloat16 if settings.precision == "bf16" else torch.float32


@dataclass
class _StageData:
    """What every part of one rank's stage reads: the device, the tokenizer and the pairs."""

    device: object
    tokenizer: object
    pad_id: int
    rows: list[dict]

    @property
    def order_keys(self) -> list[int] | None:
        """The pairs' fixed easy-to-hard order, if the file has one (selfplay.train.data)."""
        return [row["order"] for row in self.rows] if "order" in self.rows[0] else None


@dataclass
class _Engine:
    """The DeepSpeed engine around the policy, its LR scheduler and the stage's step counts."""

    engine: object
    model: object
    scheduler: object
    total_steps: int
    warmup_steps: int
    gradient_accumulation_steps: int


class TrainerRank:
    def __init__(self, rank: int, world_size: int, threads: int = 0):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.rank, self.world_size = rank, world_size
        self.weights = None  # CPU copy of the weights this rank trained last (ZeRO 0-2)

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0's answer is every rank's MASTER_ADDR/PORT."""
        import socket

        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), sock.getsockname()[1]

    def connect(self, address: tuple[str, int]) -> None:
        _init_distributed(self.rank, self.world_size, *address)
        import deepspeed  # noqa: F401  (imported now, while the ranks wait for their first stage)
        import transformers  # noqa: F401

    def train(self, policy_path: str, reference_path: str | None, pairs_path: str, out_dir: str, settings: TrainSettings,
              checkpoint_dir: str | None = None, from_memory: bool = False, reference_is_policy: bool = False,
              base: tuple[str, str] | None = None) -> dict:
        """`base`: (path, digest) of the base under train.lora (adapter.base_for), else None."""
        import gc

        import torch

        try:
            return self._train(policy_path, reference_path, pairs_path, out_dir, settings, checkpoint_dir, from_memory,
                               reference_is_policy, base)
        finally:  # the stage's engine, optimizer and activations go; a kept rank idles with only its weight copy
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _train(self, policy_path, reference_path, pairs_path, out_dir, settings, checkpoint_dir, from_memory,
               reference_is_policy, base) -> dict:
        import torch
        import torch.distributed as dist

        from selfplay.methods import LOSSES
        from selfplay.train.data import epoch_batches

        started = time.perf_counter()
        spec = LOSSES[settings.loss]
        held, self.weights = self.weights, None  # changed by this stage: a failed one leaves no copy
        if from_memory and held is None:
            raise RuntimeError(f"rank {self.rank} was asked to train the weights it holds, but holds none")
        data = self._setup(pairs_path, policy_path, settings, spec)
        model = self._policy_model(policy_path, held if from_memory else None, settings, base)
        del held
        torch.manual_seed(settings.seed)  # after the model is built: from disk or memory, the same RNG state
        reference, reference_seconds = None, 0.0  # a reference-free loss: no reference model is read
        if spec.needs_reference:
            reference = self._reference_logps(model if reference_is_policy else reference_path, data, settings)
            reference_seconds = time.perf_counter() - started
        run = self._engine(model, settings, len(data.rows))
        state = spec.state(run.total_steps) if spec.state is not None else None
        history, done_steps = self._resume(run.engine, checkpoint_dir, state)

        step = 0
        for epoch in range(settings.epochs):
            for global_batch in epoch_batches(len(data.rows), epoch, settings.seed, settings.global_batch_size,
                                              data.order_keys):
                step += 1
                if step <= done_steps:  # the order is a pure function of (seed, epoch): skip what was trained
                    continue
                history.append(self._step(run, spec, state, data, reference, global_batch, step, epoch, settings))
                if checkpoint_dir and settings.checkpoint_every and step % settings.checkpoint_every == 0 \
                        and step < run.total_steps:
                    self._checkpoint(run.engine, checkpoint_dir, step, history, state)

        self._check_finite_weights(run.engine, settings, data.device, run.scheduler.get_last_lr()[0])
        if settings.lora is None:
            self._save(run.engine, run.model, data.tokenizer, policy_path, Path(out_dir))
            if settings.zero_stage < 3:  # ZeRO-3 partitions the weights: no rank holds them whole
                self.weights = {name: tensor.detach().cpu().clone() for name, tensor in run.model.state_dict().items()}
        else:  # the adapter alone is the checkpoint and the copy (train.lora needs ZeRO 0-2)
            from peft import get_peft_model_state_dict

            self._save_adapter(run.model, data.tokenizer, policy_path, base, Path(out_dir))
            self.weights = {name: tensor.detach().cpu().clone()
                            for name, tensor in get_peft_model_state_dict(run.model).items()}
        dist.barrier()
        return {"history": history, "total_steps": run.total_steps, "warmup_steps": run.warmup_steps,
                "gradient_accumulation_steps": run.gradient_accumulation_steps, "num_pairs": len(data.rows),
                "reference_seconds": reference_seconds, "train_seconds": time.perf_counter() - started}

    # -- 1. setup --------------------------------------------------------------------------
    def _setup(self, pairs_path: str, policy_path: str, settings: TrainSettings, spec) -> _StageData:
        import torch
        from transformers import AutoTokenizer

        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        tokenizer = AutoTokenizer.from_pretrained(policy_path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return _StageData(device, tokenizer, pad_id, _load_pairs(Path(pairs_path), spec, settings.loss))

    def _policy_model(self, policy_path: str, weights: dict | None, settings: TrainSettings, base):
        """The policy to train: its checkpoint, or the weights this rank holds (its config from the folder)."""
        from selfplay.models.causal_lm import causal_lm_with_weights, load_causal_lm

        if settings.lora is not None:
            return self._lora_model(policy_path, weights, settings, base[0])
        if weights is None:
            return load_causal_lm(policy_path, _dtype(settings))
        return causal_lm_with_weights(policy_path, _dtype(settings), weights)

    def _lora_model(self, policy_path: str, weights: dict | None, settings: TrainSettings, base_path: str):
        """The base with the policy's adapter, trainable: the adapter this rank holds, the one in the
        policy's folder, or a fresh one when the policy is the base itself."""
        import torch
        from peft import set_peft_model_state_dict

        from selfplay.models import adapter
        from selfplay.models.causal_lm import load_causal_lm

        torch.manual_seed(settings.seed)  # a fresh adapter's A matrices: the same on kept or new ranks
        model = _with_lora(load_causal_lm(base_path, _dtype(settings)), settings.lora)
        if weights is None and adapter.is_adapter(policy_path):
            _check_same_adapter(policy_path, settings.lora)
            weights = adapter.adapter_weights(policy_path)
        if weights is not None:
            loaded = set_peft_model_state_dict(model, weights)
            if loaded.unexpected_keys:
                raise ValueError(f"{policy_path}: adapter weights {loaded.unexpected_keys[:3]} are not in "
                                 f"train.lora's adapter")
        return model

    # -- 2. reference log-probs, then the engine ---------------------------------------------
    def _reference_logps(self, reference, data: _StageData, settings: TrainSettings) -> list[tuple[float, float]]:
        """Summed log-probs of chosen and rejected under the reference, for all rows: `reference` is
        its checkpoint's path, or the policy model itself before any update (reference=previous)."""
        import torch
        import torch.distributed as dist

        from selfplay.models.causal_lm import load_causal_lm
        from selfplay.models.logps import response_logps

        rows, device = data.rows, data.device
        loaded = isinstance(reference, str)
        model = (load_causal_lm(reference, _dtype(settings)) if loaded else reference).to(device).eval()
        mine = {}
        indices = list(range(self.rank, len(rows), self.world_size))
        step = settings.micro_batch_size
        with torch.no_grad():
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                input_ids, attention, response_mask = _batch_tensors([rows[i] for i in chunk], ("chosen", "rejected"),
                                                                      data.pad_id, settings, device)
                logps = response_logps(model, input_ids, attention, response_mask).cpu().tolist()
                for offset, index in enumerate(chunk):
                    mine[index] = (logps[offset], logps[offset + len(chunk)])
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, mine)
        merged = {k: v for part in gathered for k, v in part.items()}
        del model
        return [merged[i] for i in range(len(rows))]

    def _engine(self, model, settings: TrainSettings, num_pairs: int) -> _Engine:
        import deepspeed
        import torch

        from selfplay.train.data import steps_per_epoch
        from selfplay.train.schedule import lr_multiplier

        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        gas = settings.global_batch_size // (settings.micro_batch_size * self.world_size)
        total_steps = settings.epochs * steps_per_epoch(num_pairs, settings.global_batch_size)
        warmup_steps = int(settings.warmup_ratio * total_steps)
        optimizer_cls = {"rmsprop": torch.optim.RMSprop, "adamw": torch.optim.AdamW}[settings.optimizer]
        if settings.offload_optimizer and settings.optimizer == "adamw":
            # ZeRO-Offload's fast path: DeepSpeed's CPU Adam (a one-time JIT build, ~2 min on CPU).
            from deepspeed.ops.adam import DeepSpeedCPUAdam as optimizer_cls
        trainable = [param for param in model.parameters() if param.requires_grad]  # under LoRA, the adapter
        optimizer = optimizer_cls(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, total_steps, warmup_steps, settings.scheduler))
        zero = {"stage": settings.zero_stage, "stage3_gather_16bit_weights_on_model_save": True}
        if settings.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        ds_config = {"train_micro_batch_size_per_gpu": settings.micro_batch_size,
                     "gradient_accumulation_steps": gas, "train_batch_size": settings.global_batch_size,
                     "gradient_clipping": settings.max_grad_norm, "zero_optimization": zero,
                     "bf16": {"enabled": settings.precision == "bf16"}, "steps_per_print": 1 << 30,
                     "zero_allow_untested_optimizer": True, "wall_clock_breakdown": False,
                     # RMSprop has no DeepSpeed CPU kernel: offloaded, the torch one steps the CPU copy
                     "zero_force_ds_cpu_optimizer": False}
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        engine.train()
        return _Engine(engine, model, scheduler, total_steps, warmup_steps, gas)

    # -- 3. steps ---------------------------------------------------------------------------
    def _step(self, run: _Engine, spec, state, data: _StageData, reference: list | None, global_batch: list[int],
              step: int, epoch: int, settings: TrainSettings) -> dict:
        """One optimizer step over a global batch (this rank's micro-batches); returns its history record,
        the batch means over all ranks, measured before the update."""
        import torch
        import torch.distributed as dist

        from selfplay.models.logps import response_logps
        from selfplay.train.data import rank_micro_batches

        device, engine = data.device, run.engine
        options = dict(settings.loss_options)
        if state is not None:
            options = state.step_options(step - 1, options)
        sums = {"loss": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0, "accuracy": 0.0}
        lr = run.scheduler.get_last_lr()[0]  # this step's lr (engine.step advances the scheduler)
        for micro in rank_micro_batches(global_batch, self.rank, self.world_size, settings.micro_batch_size):
            batch = [data.rows[i] for i in micro]
            input_ids, attention, response_mask = _batch_tensors(batch, spec.responses, data.pad_id, settings, device)
            logps = response_logps(engine, input_ids, attention, response_mask)
            policy_logps = dict(zip(spec.responses, logps.split(len(batch))))
            masks = dict(zip(spec.responses, response_mask.split(len(batch))))
            chosen_logps, rejected_logps = policy_logps["chosen"], policy_logps["rejected"]
            if reference is None:  # reference-free: the logged rewards are the policy's own log-probs
                ref_chosen = ref_rejected = torch.zeros(len(batch), device=device)
            else:
                ref_chosen = torch.tensor([reference[i][0] for i in micro], device=device)
                ref_rejected = torch.tensor([reference[i][1] for i in micro], device=device)
            columns = {name: torch.tensor([r[name] for r in batch], device=device, dtype=torch.float32)
                       for name in spec.pair_columns}
            losses = spec.loss(policy_logps, {"chosen": ref_chosen, "rejected": ref_rejected}, beta=settings.beta,
                               columns=columns, response_masks=masks, options=options)
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
        record = {k: v / settings.global_batch_size for k, v in zip(sums, totals.tolist())}
        record.update(step=step, epoch=epoch, lr=lr)
        if spec.step_metrics is not None:
            record.update(spec.step_metrics(record, settings.beta))
        if state is not None:
            record.update(state.after_step(record, settings.beta, options))
        if not math.isfinite(record["loss"]):  # deterministic: the stage fails, nothing is saved
            raise FloatingPointError(_diverged(f"the loss of step {step} (epoch {epoch}) is {record['loss']}",
                                               settings, lr))
        return record

    def _resume(self, engine, checkpoint_dir: str | None, state) -> tuple[list[dict], int]:
        """Resume inside the stage from its latest checkpoint: weights, optimizer, scheduler, RNG,
        data position and the loss's state. Returns (history so far, steps done)."""
        import torch

        if not checkpoint_dir or not (Path(checkpoint_dir) / "latest").exists():
            return [], 0
        _, client = engine.load_checkpoint(checkpoint_dir)
        torch.set_rng_state(client["torch_rng"])
        if state is not None:
            state.load_state_dict(client["loss_state"])
        return client["history"], client["step"]

    def _checkpoint(self, engine, checkpoint_dir: str, step: int, history: list[dict], state) -> None:
        import torch

        client = {"step": step, "history": history, "torch_rng": torch.get_rng_state(),
                  "loss_state": state.state_dict() if state is not None else None}
        engine.save_checkpoint(checkpoint_dir, tag=f"step{step:06d}", client_state=client)

    # -- 4. save ----------------------------------------------------------------------------
    def _check_finite_weights(self, engine, settings: TrainSettings, device, lr) -> None:
        """Each rank checks the weights it holds (under ZeRO-3 its partition); all agree, then raise."""
        import torch
        import torch.distributed as dist

        bad = next((name for name, param in engine.module.named_parameters()
                    if not torch.isfinite(getattr(param, "ds_tensor", param)).all()), None)
        flag = torch.tensor([0.0 if bad is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            raise FloatingPointError(_diverged(f"weight {bad or '(on another rank)'} is not finite after training",
                                               settings, lr))

    def _save(self, engine, model, tokenizer, policy_path, out_dir):
        from selfplay.models.causal_lm import copy_policy_extras, state_dict_for_save

        if engine.zero_optimization_stage() == 3:
            state = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
        else:
            state = model.state_dict() if self.rank == 0 else None
        if self.rank != 0:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        # A copy (save_pretrained empties the dict it gets) without tied aliases (causal_lm.py).
        model.save_pretrained(out_dir, state_dict=state_dict_for_save(model, state), safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        copy_policy_extras(policy_path, out_dir)

    def _save_adapter(self, model, tokenizer, policy_path, base: tuple[str, str], out_dir: Path) -> None:
        """train.lora's checkpoint (adapter.save_adapter) and the policy's generation config."""
        from selfplay.models import adapter
        from selfplay.models.causal_lm import copy_policy_extras

        if self.rank != 0:
            return
        adapter.save_adapter(model, tokenizer, out_dir, base)
        copy_policy_extras(policy_path, out_dir)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
