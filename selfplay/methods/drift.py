"""DRIFT (Dissatisfaction-Refined Iterative preFerence Training; code: cacayaya/DRIFT).

Pairs anchored on real dissatisfaction (DSAT) records. A record is the user's request, the
assistant turn the user disliked, and the user's complaint: {"prompt": ..., "dsat_response": ...,
"feedback": ...} in JSONL; the records are the run's prompt pool. Each iteration the current
policy writes ONE fresh answer per record from a hindsight prompt that shows it the request, its
bad answer and the complaint (`drift.hindsight_template`); the pair trains on the original
request: chosen = the fresh answer, rejected = the real DSAT turn. No judge or filter (as the
released code), so these two stages replace generate/annotate/pairs. Only single-turn requests
are supported so far. Loss `drift`: DPO plus an NLL term on the chosen response (RPO).
"""

from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from selfplay.artifacts import chat_prompt_ids, response_token_ids
from selfplay.methods.base import Method, PairRule
from selfplay.methods.dpo import dpo_loss
from selfplay.pipeline import StageResult
from selfplay.prompts import read_jsonl_records
from selfplay.stage_names import GENERATE, PAIRS, PAIRS_PARQUET, SAMPLES_PARQUET
from selfplay.train.losses import LossSpec, chosen_mean_logps


def drift_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, *,
               beta: float, chosen_nll: torch.Tensor, nll_weight: float = 0.001) -> torch.Tensor:
    """DRIFT (cacayaya/DRIFT): DPO sigmoid plus an NLL term on the chosen response (RPO).

    loss = -log sigmoid(beta*z) + nll_weight * chosen_nll   (beta 0.1, nll_weight 0.001)
    DRIFT trains with TRL's `rpo_alpha` (alignment-handbook configs, `rpo_alpha: 0.001`), whose
    NLL is the per-token mean cross-entropy of the chosen responses, tokens pooled over the
    batch: sum_i NLL_i / sum_i |y_w,i| (a scalar added to every example); TRL 1.16 dropped
    `rpo_alpha` and spells it `loss_type=["sigmoid", "sft"], loss_weights=[1, alpha]`. The RPO paper
    (Pang et al. 2024) normalises per example, NLL_i / |y_w,i|, and that is what the trainer
    passes (`chosen_mean_nll`, through the spec). Both agree when chosen lengths are equal.
    """
    return dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                    reference_rejected_logps, beta=beta) + nll_weight * chosen_nll


def chosen_mean_nll(policy_logps, response_masks) -> torch.Tensor:
    """Per-example mean token NLL of the chosen responses, NLL_i / |y_w,i| (the RPO paper's form)."""
    return -chosen_mean_logps(policy_logps, response_masks)


# -- the prompt pool and the two stages that make DRIFT's pairs -------------------------------

def load_dsat_records(path: str) -> list[dict]:
    from selfplay.recipe import RECORD_FIELDS  # the recipe section's (selfplay.recipe validates through here)

    return [{f: row[f] for f in RECORD_FIELDS} for row in read_jsonl_records(path, RECORD_FIELDS, "a DRIFT record")]


def hindsight_prompt(record: dict, template: str) -> str:
    """The prompt that shows the policy a record's request, its bad answer and the complaint."""
    return template.format(**record)


def drift_pairs(records: list[dict], samples: list[dict], prompt_token_ids: dict[int, list[int]],
                text_token_ids) -> list[dict]:
    """One pair per sampled record: (original request, fresh answer, real DSAT turn).

    samples: rows of samples.parquet (one per record, prompt_id = record index);
    prompt_token_ids: chat-templated ids of each record's ORIGINAL request;
    text_token_ids: fn(text) -> response token ids (with the end-of-turn token).
    """
    pairs = []
    for sample in samples:
        record = records[sample["prompt_id"]]
        pairs.append({"prompt_id": sample["prompt_id"], "prompt": record["prompt"],
                      "prompt_token_ids": prompt_token_ids[sample["prompt_id"]],
                      "chosen": sample["text"], "rejected": record["dsat_response"],
                      "chosen_token_ids": sample["token_ids"],
                      "rejected_token_ids": text_token_ids(record["dsat_response"])})
    return pairs


@dataclass
class DriftPairs:
    """pairs.parquet: (original request, fresh hindsight answer, real DSAT turn) per record; no judge."""

    iteration: int
    name = PAIRS
    produces = (PAIRS_PARQUET,)

    def inputs(self, ctx) -> dict:
        return {"samples": ctx.latest(self, SAMPLES_PARQUET).digest}

    def config(self, ctx) -> dict:
        return ctx.recipe.pairs.model_dump()

    def run(self, ctx, tmp) -> StageResult:
        samples = ctx.latest(self, SAMPLES_PARQUET).table().to_pylist()
        prompt_ids = {s["prompt_id"]: chat_prompt_ids(ctx.tokenizer, ctx.records[s["prompt_id"]]["prompt"])
                      for s in samples}
        rows = drift_pairs(ctx.records, samples, prompt_ids, partial(response_token_ids, ctx.tokenizer))
        pq.write_table(pa.Table.from_pylist(rows), tmp / PAIRS_PARQUET)
        return StageResult([PAIRS_PARQUET], {"pairs": len(rows)})


def hindsight_generation(recipe, iteration: int):
    """The `generate` stage of a DRIFT iteration: one answer per record, from its hindsight prompt."""
    from selfplay.generate.stage import Sample

    drift = recipe.drift
    return Sample(GENERATE, iteration, "hindsight", "entering", 1,
                  {"temperature": drift.temperature, "top_p": drift.top_p, "max_tokens": recipe.generate.max_tokens},
                  record_prompt=partial(hindsight_prompt, template=drift.hindsight_template))


def drift_front(recipe, iteration: int) -> list:
    return [hindsight_generation(recipe, iteration), DriftPairs(iteration)]


METHOD = Method(
    "drift",
    losses={"drift": LossSpec(drift_loss, batch_inputs=(("chosen_nll", chosen_mean_nll),))},
    pair_rules={"drift": PairRule(None, front=drift_front, records=load_dsat_records, samples_per_prompt=1)},
)
