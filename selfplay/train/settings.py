"""What one training rank reads of the recipe: a typed, frozen copy of train's settings.

`TrainSettings.of(config)` takes the fields of a validated `TrainConfig` (recipe.train, or the
seed stage's) that the trainer uses. It is frozen (loss_options a tuple of pairs) so no rank can
change what another trains with, and plain data so Ray pickles it to the rank actors. Fields
that only choose resources or inputs (world_size, num_gpus_per_rank, reference, soup) stay with
the stage.
"""

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TrainSettings:
    loss: str
    beta: float
    loss_options: tuple[tuple[str, float], ...]
    learning_rate: float
    optimizer: str
    weight_decay: float
    scheduler: str
    warmup_ratio: float
    epochs: int
    global_batch_size: int
    micro_batch_size: int
    max_length: int
    max_prompt_length: int
    zero_stage: int
    offload_optimizer: bool
    precision: str
    gradient_checkpointing: bool
    max_grad_norm: float
    checkpoint_every: int
    seed: int
    lora: tuple | None = None  # (r, alpha, dropout, target_modules): train.lora, or None for full fine-tuning

    @classmethod
    def of(cls, config) -> "TrainSettings":
        """From a validated TrainConfig (selfplay.recipe), never from unchecked data."""
        values = {f.name: getattr(config, f.name) for f in fields(cls)}
        values["loss_options"] = tuple(config.loss_options.items())
        lora = config.lora
        values["lora"] = None if lora is None else (lora.r, lora.alpha, lora.dropout, tuple(lora.target_modules))
        return cls(**values)
