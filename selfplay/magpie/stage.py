"""The magpie stage: an iteration's training prompts, written by a model (`prompts.source: magpie`).

Magpie (Xu et al. 2024, magpie-align/magpie): an aligned chat model given only its pre-query
template (its chat template up to the user's text, selfplay/magpie/template.py) writes a user
instruction. At the start of each iteration t >= 1 the writer (the policy entering the iteration,
or the chat model `prompts.magpie.model`) samples `candidates` instructions through the engine
pool: temperature 1, top_p 1, stopped at the end of the user turn, one request per candidate
seeded by (run seed, iteration, candidate) as generate seeds its requests. The filters
(selfplay/magpie/filters.py) drop empty, short, long, ':'-ended and looping instructions, any
that equals an eval prompt, and near duplicates within the iteration and of the prompts earlier
iterations kept; each drop is counted in the manifest. The first `prompts.per_iteration` kept
instructions are committed as prompts.parquet, which the iteration's generate stage reads
(`ctx.latest`), so resume and fork treat them like any artifact. The eval prompts stay the fixed
held-out slice of `prompts.path`.

Simplifications against the paper's code: no "\\n"-stop with early stopping, no LLM quality or
difficulty tags and no reward threshold (the issue's optional judge filter is not built), and
near duplicates by character 5-gram Jaccard instead of sentence embeddings.
A named writer model runs in an engine pool of its own: the pool is rebuilt for it and again
for the policy (two engine starts per iteration), since another architecture cannot be loaded
in place.
"""

import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from selfplay import runs
from selfplay.conversation import last_user_turn
from selfplay.failures import DeadEnd
from selfplay.magpie.filters import RULES, filter_instructions
from selfplay.magpie.template import pre_query_template, stop_at
from selfplay.pipeline import StageResult
from selfplay.sampling import ENGINE_KEYS, request_seed
from selfplay.stage_names import MAGPIE, PROMPTS_PARQUET

log = logging.getLogger("selfplay")

PROMPTS_SCHEMA = pa.schema([("prompt_id", pa.int64()), ("prompt", pa.string()), ("candidate_idx", pa.int64()),
                            ("seed", pa.int64()), ("finish_reason", pa.string())])
SAMPLING = {"temperature": 1.0, "top_p": 1.0}  # Magpie's instruction sampling


@dataclass
class MagpiePrompts:
    iteration: int
    name = MAGPIE
    produces = (PROMPTS_PARQUET,)

    def writer(self, ctx):
        """The Artifact of the model that writes the instructions."""
        spec = ctx.recipe.prompts.magpie.model
        if spec is None:
            return ctx.policy("entering", self.iteration)
        from selfplay.models import resolve_model

        return ctx.external(str(resolve_model(spec, ctx.recipe.policy.seed)))

    def earlier(self, ctx):
        return ctx.earlier_iterations(self, PROMPTS_PARQUET, (MAGPIE,))

    def inputs(self, ctx) -> dict:
        return {"writer": self.writer(ctx).digest,
                "earlier_prompts": runs.digest_of([artifact.digest for artifact in self.earlier(ctx)])}

    def config(self, ctx) -> dict:
        recipe = ctx.recipe
        return {"magpie": recipe.prompts.magpie.model_dump(), "per_iteration": recipe.prompts.per_iteration,
                "eval_digest": runs.digest_of(self.eval_prompts(ctx)), "seed": recipe.seed, **SAMPLING,
                "engine": recipe.generate.model_dump(include=ENGINE_KEYS), "dtype": recipe.policy.dtype}

    @staticmethod
    def eval_prompts(ctx) -> list[str]:
        """The held-out instructions a written one must not repeat (a conversation's last user turn)."""
        return [last_user_turn(ctx.prompts[i]) for i in ctx.eval_ids]

    def run(self, ctx, tmp) -> StageResult:
        recipe, magpie = ctx.recipe, ctx.recipe.prompts.magpie
        writer = self.writer(ctx)
        named = magpie.model is not None
        tokenizer = ctx.tokenizer if not named else _tokenizer(writer.path)
        prefix = pre_query_template(tokenizer)
        prefix_ids = tokenizer(prefix, add_special_tokens=False).input_ids
        seeds = [request_seed(recipe.seed, self.iteration, index, "magpie") for index in range(magpie.candidates)]
        if named:
            ctx.actors.drop_engines()
        try:
            pool = ctx.actors.engines(str(writer.path))
            results = pool.generate([prefix_ids] * len(seeds), seeds, n=1, max_tokens=magpie.max_tokens,
                                    **SAMPLING, **stop_at(tokenizer))
        finally:
            if named:
                ctx.actors.drop_engines()
        samples = [result[0] for result in results]
        earlier = [text for artifact in self.earlier(ctx) for text in artifact.table().column("prompt").to_pylist()]
        kept, counts = filter_instructions(
            [sample["text"] for sample in samples], eval_prompts=self.eval_prompts(ctx), earlier=earlier,
            min_chars=magpie.min_chars, max_chars=magpie.max_chars, repeat_ngram=magpie.repeat_ngram,
            max_ngram_repeats=magpie.max_ngram_repeats, near_duplicate=magpie.near_duplicate)
        if not kept:
            raise DeadEnd(f"prompts.magpie: none of the {len(samples)} sampled instructions passed the filters "
                          f"({', '.join(f'{rule} {n}' for rule, n in counts.items() if n)}); raise "
                          f"prompts.magpie.candidates or loosen the filters")
        chosen = kept[:recipe.prompts.per_iteration]
        rows = [{"prompt_id": prompt_id, "prompt": samples[index]["text"].strip(), "candidate_idx": index,
                 "seed": seeds[index], "finish_reason": samples[index]["finish_reason"]}
                for prompt_id, index in enumerate(chosen)]
        pq.write_table(pa.Table.from_pylist(rows, schema=PROMPTS_SCHEMA), tmp / PROMPTS_PARQUET)
        if len(chosen) < recipe.prompts.per_iteration:
            log.warning("iter %d %-9s %d of %d instructions kept, fewer than prompts.per_iteration (%d)",
                        self.iteration, self.name, len(chosen), len(samples), recipe.prompts.per_iteration)
        metrics = {"candidates": len(samples), "passed": len(kept), "kept": len(chosen),
                   "over_per_iteration": len(kept) - len(chosen),
                   **{f"dropped_{rule}": counts[rule] for rule in RULES},
                   "truncated": sum(sample["finish_reason"] == "length" for sample in samples)}
        return StageResult([PROMPTS_PARQUET], metrics, {"pre_query_template": prefix})


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
