"""Test-only harness: TRL 1.16's DPO losses evaluated on plain tensors.

TRL has no standalone loss function; every loss type lives inside the private
`DPOTrainer._compute_loss(model, inputs, return_outputs)`. We build the trainer with
`object.__new__` (no model, dataset or Accelerator), set only the attributes that method reads
(as `DPOTrainer.__init__` would from a `DPOConfig`), and pass a stub model whose forward
returns the per-token log-probs we choose. Reference log-probs go in through the
`precompute_ref_log_probs` path, so no reference model is needed.

This leans on private names, hence the exact version pin: re-read
`trl/trainer/dpo_trainer.py::_compute_loss` before bumping it.
"""

from collections import defaultdict
from types import SimpleNamespace

import torch

TRL_VERSION = "1.16.0"
_PROMPT_LENGTH = 2  # dummy prompt tokens before each completion


class _StubModel:
    """Stands in for the policy: returns the chosen per-token log-probs, whatever the input."""

    training = True

    def __init__(self, log_probs: torch.Tensor):
        self.log_probs = log_probs

    def __call__(self, input_ids, labels=None, fused_lm_head=None, **kwargs):
        # TRL's fused LM head returns log p(token t | < t) at position t-1, zero where labels are
        # -100 (it sums over the whole row without masking), plus logging-only statistics.
        zeros = torch.zeros_like(self.log_probs)
        return SimpleNamespace(log_probs=self.log_probs, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(self.log_probs, dtype=torch.bool), aux_loss=None)


class _StubAccelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(tensor):
        return tensor

    @staticmethod
    def gather(tensor):
        return tensor


def _pack(token_logps: list[torch.Tensor]):
    """Rows of per-token completion log-probs -> (input_ids, attention_mask, completion_mask, log_probs)."""
    width = _PROMPT_LENGTH + max(len(row) for row in token_logps)
    n = len(token_logps)
    input_ids = torch.ones((n, width), dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    completion_mask = torch.zeros((n, width), dtype=torch.long)
    log_probs = torch.zeros((n, width - 1), dtype=torch.float64)
    for i, row in enumerate(token_logps):
        end = _PROMPT_LENGTH + len(row)
        attention_mask[i, :end] = 1
        completion_mask[i, _PROMPT_LENGTH:end] = 1
        log_probs[i, _PROMPT_LENGTH - 1:end - 1] = row  # position t-1 predicts token t
    return input_ids, attention_mask, completion_mask, log_probs


def trl_dpo_loss(loss_type: str | list[str], *, beta: float, chosen_token_logps: list[torch.Tensor],
                 rejected_token_logps: list[torch.Tensor], reference_chosen_logps: torch.Tensor,
                 reference_rejected_logps: torch.Tensor, label_smoothing: float = 0.0,
                 loss_weights: list[float] | None = None) -> torch.Tensor:
    """TRL's batch loss (a scalar: the mean over pairs of the per-pair loss, summed over loss types).

    chosen_token_logps / rejected_token_logps: one 1-D tensor of policy token log-probs per pair
    (lengths may differ: TRL's length-normalised losses see them); reference_*: summed (B,).
    """
    import trl
    from trl import DPOTrainer

    if trl.__version__ != TRL_VERSION:
        raise RuntimeError(f"trl_reference was written against trl=={TRL_VERSION}, found {trl.__version__}")
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    input_ids, attention_mask, completion_mask, log_probs = _pack(list(chosen_token_logps) + list(rejected_token_logps))

    trainer = object.__new__(DPOTrainer)
    # Exactly the attributes `_compute_loss` reads, with the values DPOTrainer.__init__ sets
    # from a default DPOConfig (except the ones under test).
    trainer.model = _StubModel(log_probs)
    trainer.ref_model = None
    trainer.accelerator = _StubAccelerator()
    trainer.args = SimpleNamespace(discopop_tau=0.05, gradient_checkpointing_kwargs=None)
    trainer.beta = beta
    trainer.precompute_ref_logps = True
    trainer.loss_types = loss_types
    trainer.loss_weights = loss_weights or [1.0] * len(loss_types)
    trainer.ld_alpha = None
    trainer.f_divergence_type = "reverse_kl"
    trainer.f_alpha_divergence_coef = 0.5
    trainer.label_smoothing = label_smoothing
    trainer.use_weighting = False
    trainer.aux_loss_enabled = False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens = 0
    trainer._tp_size = 1

    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
              "ref_chosen_logps": torch.as_tensor(reference_chosen_logps, dtype=torch.float64),
              "ref_rejected_logps": torch.as_tensor(reference_rejected_logps, dtype=torch.float64)}
    return trainer._compute_loss(trainer.model, inputs, return_outputs=False)
