"""The generate stage: K samples per prompt from the current policy into samples.parquet.

With `prompts.source: magpie` the training prompts are the iteration's prompts.parquet (written
by the magpie stage, selfplay/magpie/stage.py, read through `ctx.latest`), prompt ids its rows.

One row per (prompt, sample): prompt_id, prompt text (a conversation's last user turn), the
conversation (`messages`; None for a string prompt), chat-templated prompt token ids (as the
engine saw them, selfplay/conversation.py), sample_idx, response text, token ids, per-token
log-probs (None unless `generate.store_logprobs`), finish reason, and the request seed (a
prompt's K samples come from one n=K request seeded by (run seed, iteration, prompt)).

Long prompts: a chat-templated prompt longer than `max_model_len - max_tokens` cannot be
sampled in full. A conversation first loses its oldest exchanges (the system prompt stays);
then `generate.long_prompts` applies to what is left: `truncate` (the default) keeps its last
tokens, the end of the user's text and the assistant header the model answers after; `skip`
leaves the prompt out (it then has no samples, so no judgments, pairs or win rate). The stage
reports the prompts it shortened, truncated or skipped.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from selfplay import runs
from selfplay.conversation import Prompt, fit_prompt_ids, last_user_turn, with_system
from selfplay.pipeline import StageResult
from selfplay.sampling import ENGINE_KEYS, request_seed
from selfplay.stage_names import BASELINE, EVAL_GEN, GENERATE, PROMPTS_PARQUET, REFERENCE_SAMPLES, SAMPLES_PARQUET

log = logging.getLogger("selfplay")

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SAMPLES_SCHEMA = pa.schema([("prompt_id", pa.int64()), ("prompt", pa.string()), ("messages", MESSAGES_TYPE),
                            ("prompt_token_ids", pa.list_(pa.int64())), ("sample_idx", pa.int64()),
                            ("text", pa.string()), ("token_ids", pa.list_(pa.int64())),
                            ("logprobs", pa.list_(pa.float64())), ("finish_reason", pa.string()),
                            ("seed", pa.int64())])


def prompt_budget(max_model_len: int, max_tokens: int) -> int:
    """Prompt tokens that leave room for max_tokens of response in the engine's context."""
    budget = max_model_len - max_tokens
    if budget < 1:
        raise ValueError(f"max_tokens ({max_tokens}) leaves no room for a prompt in generate.max_model_len "
                         f"({max_model_len})")
    return budget


def generate_samples(pool, tokenizer, prompt_ids: list[int], prompts: list[Prompt], *, n: int, temperature: float,
                     top_p: float, max_tokens: int, run_seed: int, iteration: int, purpose: str,
                     max_model_len: int, long_prompts: str = "truncate") -> tuple[pa.Table, dict]:
    """(samples table, report). The report names the prompts the long-prompt rules touched:
    {"rule", "budget", "shortened": [prompt ids that lost history], "turns_dropped": messages
    dropped in all, "truncated": [prompt ids], "skipped": [prompt ids]}."""
    budget = prompt_budget(max_model_len, max_tokens)
    report = {"rule": long_prompts, "budget": budget, "shortened": [], "turns_dropped": 0, "truncated": [],
              "skipped": []}
    kept, token_ids = [], []
    for prompt_id in prompt_ids:
        fitted, dropped, cut = fit_prompt_ids(tokenizer, prompts[prompt_id], budget, long_prompts)
        if dropped:
            report["shortened"].append(prompt_id)
            report["turns_dropped"] += dropped
        if fitted is None:
            report["skipped"].append(prompt_id)
            continue
        if cut:
            report["truncated"].append(prompt_id)
        kept.append(prompt_id)
        token_ids.append(fitted)
    if not kept:
        raise ValueError(f"all {len(prompt_ids)} prompts are longer than generate.max_model_len - max_tokens "
                         f"({budget} tokens) and generate.long_prompts is 'skip': raise generate.max_model_len "
                         f"or set generate.long_prompts=truncate")
    seeds = [request_seed(run_seed, iteration, i, purpose) for i in kept]
    results = pool.generate(token_ids, seeds, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    rows = []
    for prompt_id, ids, seed, samples in zip(kept, token_ids, seeds, results):
        for sample_idx, sample in enumerate(samples):
            prompt = prompts[prompt_id]
            rows.append({"prompt_id": prompt_id, "prompt": last_user_turn(prompt),
                         "messages": None if isinstance(prompt, str) else prompt, "prompt_token_ids": ids,
                         "sample_idx": sample_idx, "text": sample["text"], "token_ids": sample["token_ids"],
                         "logprobs": sample["logprobs"], "finish_reason": sample["finish_reason"], "seed": seed})
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), report



@dataclass
class Sample:
    """Sample n responses per prompt with a policy into samples.parquet: the training samples
    (`generate`), the eval samples of the initial policy (`baseline`) and of each trained one
    (`eval-gen`), the initial policy's reference responses to every training prompt of the run
    (`reference-samples`, which annotate.shaping scores against), and answers prompted from the
    run's records (`record_prompt`: DRIFT's hindsight prompt of each DSAT record,
    selfplay/methods/drift.py)."""

    name: str
    iteration: int
    purpose: str  # "train" / "eval" / "reference" / "hindsight": part of each request's seed
    policy_source: str  # see RunContext.policy
    n: int
    sampling: dict  # temperature, top_p, max_tokens
    record_prompt: Callable[[dict], str] | None = None  # fn(record) -> prompt; None: the prompt file's texts
    written: bool = False  # the prompts are the iteration's prompts.parquet (Magpie's), not the file's
    produces = (SAMPLES_PARQUET,)

    @classmethod
    def generate(cls, recipe, iteration):
        g = recipe.generate
        return cls(GENERATE, iteration, "train", "entering", g.samples_per_prompt,
                   {"temperature": g.temperature, "top_p": g.top_p, "max_tokens": g.max_tokens},
                   written=recipe.prompts.source == "magpie")

    @classmethod
    def baseline(cls, recipe):
        return cls(BASELINE, 0, "eval", "initial", recipe.evaluate.samples_per_prompt, eval_sampling(recipe))

    @classmethod
    def reference(cls, recipe):
        shaping = recipe.annotate.shaping
        return cls(REFERENCE_SAMPLES, 0, "reference", "initial", shaping.references,
                   {"temperature": shaping.temperature, "top_p": shaping.top_p, "max_tokens": recipe.generate.max_tokens})

    @classmethod
    def evaluation(cls, recipe, iteration):
        return cls(EVAL_GEN, iteration, "eval", "trained", recipe.evaluate.samples_per_prompt, eval_sampling(recipe))

    def prompt_ids(self, ctx) -> list[int]:
        if self.written:
            return list(range(len(self.prompts(ctx))))
        if self.purpose == "reference":  # every prompt the run trains on, once (a reused prompt too)
            return sorted({prompt_id for ids in ctx.slices for prompt_id in ids})
        return ctx.eval_ids if self.purpose == "eval" else ctx.slices[self.iteration - 1]

    def prompts(self, ctx) -> list[Prompt]:
        if self.written:  # Magpie's instructions, under the recipe's system prompt like the file's
            system = ctx.recipe.prompts
            return [with_system(text, system.system, system.system_mode)
                    for text in ctx.latest(self, PROMPTS_PARQUET).table().column("prompt").to_pylist()]
        if self.record_prompt is None:
            return ctx.prompts
        return [self.record_prompt(record) for record in ctx.records]

    def inputs(self, ctx) -> dict:
        inputs = {"policy": ctx.policy(self.policy_source, self.iteration).digest}
        if self.written:
            inputs["prompts"] = ctx.latest(self, PROMPTS_PARQUET).digest
        return inputs

    def config(self, ctx) -> dict:
        """What decides the samples besides the policy. `prompts_digest`: the texts of the prompts
        sampled (ids alone would let an edited prompt file pass as done on resume); only this
        stage's prompts, so an edit redoes exactly the stages that read the edited prompts."""
        recipe, prompt_ids, prompts = ctx.recipe, self.prompt_ids(ctx), self.prompts(ctx)
        config = {"prompt_ids": prompt_ids, "prompts_digest": runs.digest_of([prompts[i] for i in prompt_ids]),
                  "n": self.n, **self.sampling, "seed": recipe.seed, "purpose": self.purpose,
                  "engine": recipe.generate.model_dump(include=ENGINE_KEYS), "dtype": recipe.policy.dtype}
        return self._committed_format(ctx, config, prompts)

    def _committed_format(self, ctx, config: dict, prompts: list[str]) -> dict:
        """The config as the committed stage recorded it, when only the digest's format differs: a
        stage committed before `prompts_digest` covered exactly its prompts (none; DRIFT's covered
        all records) stays done while its prompts' texts are unchanged, so a new version does not
        redo every finished run's sampling (and, on GPUs, everything after it)."""
        folder = runs.StageDir(ctx.run_dir, self.iteration, self.name)
        old = (folder.manifest() or {}).get("config")
        if not isinstance(old, dict) or "prompts_digest" in old and self.record_prompt is None:
            return config  # no committed config, or one in today's format: compared as it is
        legacy = {k: v for k, v in config.items() if k != "prompts_digest"}
        if "prompts_digest" in old:  # DRIFT's earlier digest: all records' hindsight prompts
            legacy["prompts_digest"] = runs.digest_of(prompts)
        if runs.digest_of(legacy) != runs.digest_of(old):
            return config  # another setting or a DRIFT record changed: redone anyway
        if "prompts_digest" in old:
            return legacy
        try:  # no digest recorded: the committed samples hold the texts they were sampled from
            sampled = pq.read_table(folder.path / SAMPLES_PARQUET, columns=["prompt_id", "prompt"]).to_pylist()
        except (OSError, pa.ArrowException):
            return config
        wanted = set(config["prompt_ids"])
        same = all(row["prompt_id"] in wanted and row["prompt"] == prompts[row["prompt_id"]] for row in sampled)
        return legacy if same else config

    def run(self, ctx, tmp) -> StageResult:
        recipe, prompt_ids = ctx.recipe, self.prompt_ids(ctx)
        started = time.time()
        pool = ctx.actors.engines(str(ctx.policy(self.policy_source, self.iteration).path))
        load_seconds = time.time() - started
        table, long_prompts = generate_samples(
            pool, ctx.tokenizer, prompt_ids, self.prompts(ctx), n=self.n, run_seed=recipe.seed,
            iteration=self.iteration, purpose=self.purpose, max_model_len=recipe.generate.max_model_len,
            long_prompts=recipe.generate.long_prompts, **self.sampling)
        if long_prompts["shortened"]:
            log.warning("iter %d %-9s %d of %d conversations lost their %d oldest messages in all to fit "
                        "generate.max_model_len - max_tokens (%d tokens), prompt ids %s", self.iteration, self.name,
                        len(long_prompts["shortened"]), len(prompt_ids), long_prompts["turns_dropped"],
                        long_prompts["budget"], long_prompts["shortened"][:10])
        for what in ("truncated", "skipped"):
            if long_prompts[what]:
                log.warning("iter %d %-9s %d of %d prompts %s: longer than generate.max_model_len - max_tokens "
                            "(%d tokens; generate.long_prompts=%s), prompt ids %s", self.iteration, self.name,
                            len(long_prompts[what]), len(prompt_ids), what, long_prompts["budget"],
                            long_prompts["rule"], long_prompts[what][:10])
        pq.write_table(table, tmp / SAMPLES_PARQUET)
        tokens = sum(len(t) for t in table.column("token_ids").to_pylist())
        seconds = time.time() - started
        metrics = {"samples": table.num_rows, "prompts": len(prompt_ids), "tokens": tokens,
                   "prompts_shortened": len(long_prompts["shortened"]), "turns_dropped": long_prompts["turns_dropped"],
                   "prompts_truncated": len(long_prompts["truncated"]),
                   "prompts_skipped": len(long_prompts["skipped"]), "engine_load_seconds": load_seconds,
                   "tokens_per_second": tokens / max(seconds - load_seconds, 1e-9)}
        if self.name == BASELINE:  # the prompt pool, recorded once per run
            metrics["duplicate_prompts_dropped"] = ctx.duplicate_prompts
        return StageResult([SAMPLES_PARQUET], metrics, {"long_prompts": long_prompts})


def eval_sampling(recipe) -> dict:
    evaluate = recipe.evaluate
    return {"temperature": evaluate.temperature, "top_p": evaluate.top_p,
            "max_tokens": evaluate.max_tokens or recipe.generate.max_tokens}
