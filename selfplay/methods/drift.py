"""DRIFT (Dissatisfaction-Refined Iterative preFerence Training; code: cacayaya/DRIFT).

Pairs anchored on real dissatisfaction (DSAT) records. A record is the user's request, the
assistant turn the user disliked, and the user's complaint: {"prompt": ..., "dsat_response": ...,
"feedback": ...} in JSONL; the records are the run's prompt pool. Each iteration the current
policy writes ONE fresh answer per record from a hindsight prompt that shows it the request, its
bad answer and the complaint (`drift.hindsight_template`); the pair trains on the original
request: chosen = the fresh answer, rejected = the real DSAT turn. No judge or filter (as the
released code), so these two stages replace generate/annotate/pairs. A record may give the
conversation that led to the DSAT turn (`messages`, ending with the request; WildFeedback's
histories) in place of `prompt`: the pair then trains on the whole conversation, and the
hindsight template's {prompt} shows it as text. Loss `drift`: DPO plus an NLL term on the chosen
response (RPO).
"""

from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from selfplay.artifacts import response_token_ids
from selfplay.conversation import as_text, last_user_turn, prompt_token_ids
from selfplay.methods.base import Method, PairRule
from selfplay.methods.dpo import dpo_loss
from selfplay.pipeline import StageResult
from selfplay.prompts import PromptError, jsonl_rows, missing_strings, read_conversation
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
    """The records of a DRIFT JSONL: prompt (a string, or the `messages` conversation), dsat_response, feedback."""
    from selfplay.recipe import RECORD_FIELDS  # the recipe section's (selfplay.recipe validates through here)

    records = []
    for number, row in jsonl_rows(path):
        conversation = "messages" in row
        fields = [f for f in RECORD_FIELDS if not (conversation and f == "prompt")]
        missing = missing_strings(row, fields)
        if missing:
            raise PromptError(f"{path}:{number}: a DRIFT record needs non-empty string fields {', '.join(fields)}"
                              f"{'' if conversation else ' (or messages in place of prompt)'}; missing or empty: "
                              f"{', '.join(missing)}")
        prompt = read_conversation(row["messages"], f"{path}:{number}", "messages") if conversation else row["prompt"]
        records.append({"prompt": prompt, "dsat_response": row["dsat_response"], "feedback": row["feedback"]})
    return records


def hindsight_prompt(record: dict, template: str) -> str:
    """The prompt that shows the policy a record's request (its whole conversation), its bad
    answer and the complaint."""
    return template.format(**{**record, "prompt": as_text(record["prompt"])})


def drift_pairs(records: list[dict], samples: list[dict], prompt_token_ids: dict[int, list[int]],
                text_token_ids) -> list[dict]:
    """One pair per sampled record: (original request, fresh answer, real DSAT turn).

    samples: rows of samples.parquet (one per record, prompt_id = record index);
    prompt_token_ids: chat-templated ids of each record's ORIGINAL request (its conversation);
    text_token_ids: fn(text) -> response token ids (with the end-of-turn token).
    """
    pairs = []
    for sample in samples:
        record = records[sample["prompt_id"]]
        pairs.append({"prompt_id": sample["prompt_id"], "prompt": last_user_turn(record["prompt"]),
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
        # the pool's prompts: the records' requests under the recipe's prompts.system
        prompt_ids = {s["prompt_id"]: prompt_token_ids(ctx.tokenizer, ctx.prompts[s["prompt_id"]]) for s in samples}
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
    losses={"drift": LossSpec(drift_loss, default_beta=0.1, batch_inputs=(("chosen_nll", chosen_mean_nll),))},
    pair_rules={"drift": PairRule(None, front=drift_front, records=load_dsat_records, samples_per_prompt=1)},
)
