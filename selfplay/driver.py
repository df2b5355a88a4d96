"""The iteration loop: for t = first..T, generate -> annotate -> pairs -> train -> evaluate.

Each stage is `run_stage(...)`: skipped when its manifest is done with the same inputs and
config, otherwise run into a temporary folder and committed (runs.py). Resume is therefore
"run again". The driver only walks stages, holds the long-lived engines and judge, and
records timings; the science lives in the stage modules.

Before iteration 1: the initial policy's eval samples (`baseline`), an optional seed stage
(plain DPO on labelled pairs: DRIFT, Selfie) and an optional soup reference (SALSA).
DRIFT iterations replace generate+annotate+pairs with one hindsight sample per DSAT record.
"""

import json
import logging
import shutil
import time
import traceback
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from selfplay import lineage, runs
from selfplay.failures import error_summary, is_worker_failure
from selfplay.recipe import Recipe

log = logging.getLogger("selfplay")


class StageFailed(RuntimeError):
    """A stage raised; the run directory keeps every finished stage, so `resume` continues."""


def _prepare_checkpoints(folder: Path, key: dict) -> None:
    """Keep in-stage training checkpoints only if they belong to the same inputs and config."""
    key_path = folder / "key.json"
    if folder.exists() and runs.read_scratch_json(key_path, None) != runs.digest_of(key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_json_atomic(key_path, runs.digest_of(key))


class Driver:
    def __init__(self, recipe: Recipe, run_dir: Path, ray_address: str | None = None, allow_changes: bool = False):
        self.recipe = recipe
        self.run_dir = Path(run_dir).resolve()
        self.ray_address = ray_address
        self.allow_changes = allow_changes
        self.pool = None
        self.model_judge = None
        self.eval_judge = None
        self.summary = []
        self.change_note = None  # the recipe keys this command changed, for superseded/ reason records
        self.running = None  # (iteration, stage) last entered: what an interrupt stopped

    # -- stage bookkeeping ---------------------------------------------------------------
    def run_stage(self, iteration: int, name: str, inputs: dict, config: dict, body) -> dict:
        """body(tmp_dir) -> (output names, metrics, extra manifest fields)."""
        self.running = (iteration, name)
        stage = runs.StageDir(self.run_dir, iteration, name)
        config_digest = runs.digest_of(config)
        if stage.is_done(inputs, config_digest):
            shutil.rmtree(stage.tmp, ignore_errors=True)  # debris of a crash after the stage had finished
            log.info("iter %d %-9s done earlier, skipped", iteration, name)
            manifest = stage.manifest()
            self._record(stage, manifest)  # its metrics.jsonl rows, if a crash came before them
            return manifest
        failed_path = stage.path.with_name(name + ".failed.json")
        started = time.time()
        for attempt in range(self.recipe.max_stage_retries + 1):
            tmp = stage.begin()
            log.info("iter %d %-9s running%s", iteration, name, f" (retry {attempt})" if attempt else "")
            try:
                outputs, metrics, extra = body(tmp)
                break
            except Exception as error:
                summary = error_summary(error)
                runs.write_json_atomic(failed_path, {"error": summary[:500], "attempt": attempt, "at": time.time(),
                                                     "traceback": traceback.format_exc()})
                if not is_worker_failure(error) or attempt == self.recipe.max_stage_retries:
                    if isinstance(error, OSError):  # disk full, read-only: the CLI explains it
                        raise
                    raise StageFailed(f"iteration {iteration} stage {name} failed after {attempt + 1} attempt(s): "
                                      f"{summary[:300]} (traceback in {failed_path})") from error
                log.warning("iter %d %-9s: a Ray worker died (%s); retrying", iteration, name, type(error).__name__)
                self._drop_actors()
        seconds = time.time() - started
        failed_path.unlink(missing_ok=True)
        manifest = {"iteration": iteration, "stage": name, "inputs": inputs, "config": config,
                    "config_digest": config_digest, "started_at": started, "seconds": seconds,
                    "metrics": metrics, "packages": self.packages, "code_version": self.code_version,
                    "run_id": self.info["run_id"], **extra}
        manifest = stage.commit(outputs, manifest, self.change_note)  # an earlier result goes to superseded/
        self._record(stage, manifest)
        log.info("iter %d %-9s finished in %.1f s", iteration, name, seconds)
        return manifest

    def _record(self, stage: runs.StageDir, manifest: dict) -> None:
        """The stage's rows in metrics.jsonl (and W&B): its train steps, if any, then its metrics."""
        steps = []
        if "first_global_step" in manifest:
            history = (stage.path / "history.jsonl").read_text().splitlines()
            steps = [{**json.loads(line), "global_step": manifest["first_global_step"] + offset}
                     for offset, line in enumerate(history)]
        self.tracker.record(stage.iteration, stage.name, {**manifest["metrics"], "seconds": manifest["seconds"]},
                            manifest["started_at"], steps)

    def _path(self, iteration: int, stage: str, name: str) -> Path:
        return self.run_dir / f"iter-{iteration:03d}" / stage / name

    # -- long-lived actors -------------------------------------------------------------------
    def _engines(self, policy_path: str):
        from selfplay.generate.pool import EnginePool

        if self.pool is None:
            self._make_room_on_gpus(self.gpu_needs["generate"])
            self.pool = EnginePool(policy_path, self.recipe.generate, self.recipe.policy.dtype, self.recipe.seed)
            self.pool.loaded = policy_path
        elif self.pool.loaded != policy_path:
            self.pool.load_policy(policy_path)
            self.pool.loaded = policy_path
        return self.pool

    def _release_engines(self):
        if self.pool is not None and not self.recipe.generate.keep_engine:
            self.pool.shutdown()
            self.pool = None

    def _judge(self, policy_path: str):
        from selfplay.annotate.stage import make_judge

        if self.recipe.annotate.type == "selfie":  # judges with the current policy: new each iteration
            if self.model_judge is not None and self.model_judge.policy_path != policy_path:
                self.model_judge.shutdown()
                self.model_judge = None
            if self.model_judge is None:
                self._make_room_on_gpus(self.gpu_needs["annotate"])
                self.model_judge = make_judge(self.recipe.annotate, policy_path, self.recipe.policy.seed,
                                              default_reference=self.initial_policy)
                self.model_judge.policy_path = policy_path
            return self.model_judge
        if self.model_judge is None:
            self._make_room_on_gpus(self.gpu_needs["annotate"])
            self.model_judge = make_judge(self.recipe.annotate, policy_path, self.recipe.policy.seed)
        return self.model_judge

    def _evaluation_judge(self, policy_path: str):
        """The evaluate section's own judge if it has one (e.g. Selfie runs), else the run's."""
        from selfplay.annotate.stage import make_judge

        config = self.recipe.evaluate.judge
        if config is None:
            return self._judge(policy_path), self.recipe.annotate
        if self.eval_judge is None:
            self._make_room_on_gpus(self.gpu_needs["evaluate"])
            self.eval_judge = make_judge(config, policy_path, self.recipe.policy.seed, default_reference=self.initial_policy)
        return self.eval_judge, config

    def _make_room_on_gpus(self, gpus: float) -> None:
        """Release the long-lived actors (engines, judges) if fewer than `gpus` GPUs are free:
        on a node that cannot hold every group at once they take turns (see selfplay.cluster)."""
        from selfplay.cluster import free_gpus, wait_for_free_gpus

        if gpus <= 0 or free_gpus() >= gpus:
            return
        held = [what for name, what in (("pool", "vLLM engines"), ("model_judge", "judge"),
                                        ("eval_judge", "evaluation judge")) if getattr(self, name) is not None]
        if held:
            log.info("releasing the %s: %g GPUs needed, %g free", " and the ".join(held), gpus, free_gpus())
            self._drop_actors()
        wait_for_free_gpus(gpus)  # also the GPUs of actors that just ended (e.g. the training ranks)

    def _drop_actors(self):
        """Shut down and forget the long-lived actors (after a worker died, or to free GPUs); the
        next stage that needs one starts it again."""
        for holder in ("pool", "model_judge", "eval_judge"):
            actor = getattr(self, holder)
            if actor is not None:
                try:
                    actor.shutdown()
                except Exception:  # already dead
                    pass
                setattr(self, holder, None)

    # -- the run ---------------------------------------------------------------------------
    def run(self, parent: dict | None = None) -> list[dict]:
        from selfplay import console
        from selfplay.cluster import check_gpu_fit, gpu_needs, start_ray
        from selfplay.models import resolve_model
        from selfplay.preflight import check_recipe, load_tokenizer
        from selfplay.track.tracker import Tracker

        recipe = self.recipe
        # Pre-flight, before the run directory is touched (and before Ray's start-up): model
        # folders, tiny kinds, prompts and seed pairs. A broken one must not freeze a run.json.
        pool = check_recipe(recipe)
        self.prompts, self.records, self.duplicate_prompts = pool.prompts, pool.records, pool.duplicates
        self.initial_policy = str(resolve_model(recipe.policy.path, recipe.policy.seed))  # a tiny: one is built
        self.tokenizer = load_tokenizer("policy.path", self.initial_policy)
        with runs.RunLock(self.run_dir):
            console.log_to_run_dir(self.run_dir)  # before Ray starts: its lines and the actors' go there
            if pool.duplicates:
                log.info("prompts: %d rows repeat an earlier prompt (same text up to case and whitespace) and are "
                         "never selected; %d distinct prompts", pool.duplicates, len(pool.prompts) - pool.duplicates)
            start_ray(self.ray_address, recipe.generate.replicas + recipe.train.world_size + 1)
            self.gpu_needs = gpu_needs(recipe)
            check_gpu_fit(self.gpu_needs)  # before run.json: a recipe the cluster cannot hold leaves no run behind
            started = time.time()
            self.info = lineage.init_run_dir(self.run_dir, recipe, self.allow_changes, parent)
            accepted = [c for c in self.info.get("recipe_changes", []) if c.get("at", 0) >= started]
            self.change_note = {"recipe_change": accepted[-1]["keys"]} if accepted else None
            self.packages, self.code_version = runs.package_versions(), runs.code_version()
            self.tracker = Tracker(self.run_dir, self.info, recipe, self.info["recipe"])
            try:
                self._run_iterations(pool.eval_ids, pool.slices)
            finally:
                self.tracker.finish()
                self._drop_actors()
        return self.summary

    def _external_digest(self, path: str) -> str:
        """Digest of a file or folder outside the run (initial policy, soup checkpoints, seed
        pairs), re-reading only files changed since the last start: a 7B checkpoint is not
        re-hashed at every resume."""
        cache = self.run_dir / "external_fingerprints.json"
        known = runs.read_scratch_json(cache, {})
        known = known if isinstance(known, dict) else {}
        key = str(Path(path).resolve())
        known[key] = runs.fingerprint(Path(path), known.get(key))
        runs.write_json_atomic(cache, known)
        return runs.content_digest(known[key])

    def _run_iterations(self, eval_ids, slices):
        from selfplay.evaluate.stage import response_stats

        recipe = self.recipe
        initial_digest = self._external_digest(self.initial_policy)
        self.initial = (self.initial_policy, initial_digest)
        self.eval_sampling = {"temperature": recipe.evaluate.temperature, "top_p": recipe.evaluate.top_p,
                              "max_tokens": recipe.evaluate.max_tokens or recipe.generate.max_tokens}
        self.eval_ids = eval_ids
        self.baseline = self._sample_stage(0, "baseline", self.initial, eval_ids, recipe.evaluate.samples_per_prompt,
                                           self.eval_sampling, "eval")
        baseline_stats = response_stats(pq.read_table(self._path(0, "baseline", "samples.parquet")))
        self.summary = [{"iteration": 0, "win_rate_vs_initial": 0.5, **baseline_stats, "loss": None, "seconds": {}}]
        self.soup = self._soup_reference() if recipe.train.reference == "soup" else None

        parent = self.info.get("parent")
        first = parent["iteration"] if parent else 1
        if first > 1:  # a fork: start from its own copy of the parent's policy, checked against run.json
            policy = lineage.fork_start_policy(self.run_dir, self.info)
        else:
            policy = self._seed_stage() if recipe.seed_training else self.initial
        for iteration in range(first, recipe.iterations + 1):
            policy = self._iteration(iteration, policy, slices[iteration - 1])

    def _iteration(self, iteration: int, policy: tuple[str, str], prompt_ids: list[int]) -> tuple[str, str]:
        recipe, seconds = self.recipe, {}
        if recipe.pairs.type == "drift":
            generated = self._hindsight_stage(iteration, policy, prompt_ids)
            paired = self._drift_pairs_stage(iteration, generated)
        else:
            generated = self._sample_stage(iteration, "generate", policy, prompt_ids, recipe.generate.samples_per_prompt,
                                           {"temperature": recipe.generate.temperature, "top_p": recipe.generate.top_p,
                                            "max_tokens": recipe.generate.max_tokens}, "train")
            annotated = self._annotate_stage(iteration, policy, generated)
            seconds["annotate"] = annotated["seconds"]
            paired = self._pairs_stage(iteration, generated, annotated)
        seconds["generate"], seconds["pairs"] = generated["seconds"], paired["seconds"]
        trained, new_policy = self._train_stage(iteration, policy, paired)
        seconds["train"] = trained["seconds"]
        eval_samples = self._sample_stage(iteration, "eval-gen", new_policy, self.eval_ids,
                                          recipe.evaluate.samples_per_prompt, self.eval_sampling, "eval")
        evaluated = self._evaluate_stage(iteration, new_policy, eval_samples)
        seconds["evaluate"] = eval_samples["seconds"] + evaluated["seconds"]
        self.summary.append({"iteration": iteration, **evaluated["metrics"], "loss": trained["metrics"]["loss"],
                             "seconds": seconds})
        return new_policy

    # -- stages ------------------------------------------------------------------------------
    def _sample_stage(self, iteration, name, policy, prompt_ids, n, sampling, purpose, prompts=None):
        """Sample n responses per prompt with `policy` (path, digest) into samples.parquet."""
        from selfplay.generate.stage import generate_samples

        policy_path, policy_digest = policy
        config = {"prompt_ids": prompt_ids, "n": n, **sampling, "seed": self.recipe.seed, "purpose": purpose,
                  "engine": self.recipe.generate.model_dump(include={"replicas", "tensor_parallel_size", "max_model_len",
                                                                     "long_prompts", "store_logprobs", "engine_args"}),
                  "dtype": self.recipe.policy.dtype}
        if prompts is not None:
            config["prompts_digest"] = runs.digest_of(prompts)

        def body(tmp):
            started = time.time()
            pool = self._engines(policy_path)
            load_seconds = time.time() - started
            table, long_prompts = generate_samples(
                pool, self.tokenizer, prompt_ids, prompts or self.prompts, n=n, run_seed=self.recipe.seed,
                iteration=iteration, purpose=purpose, max_model_len=self.recipe.generate.max_model_len,
                long_prompts=self.recipe.generate.long_prompts, **sampling)
            for what in ("truncated", "skipped"):
                if long_prompts[what]:
                    log.warning("iter %d %-9s %d of %d prompts %s: longer than generate.max_model_len - max_tokens "
                                "(%d tokens; generate.long_prompts=%s), prompt ids %s", iteration, name,
                                len(long_prompts[what]), len(prompt_ids), what, long_prompts["budget"],
                                long_prompts["rule"], long_prompts[what][:10])
            pq.write_table(table, tmp / "samples.parquet")
            tokens = sum(len(t) for t in table.column("token_ids").to_pylist())
            seconds = time.time() - started
            metrics = {"samples": table.num_rows, "prompts": len(prompt_ids), "tokens": tokens,
                       "prompts_truncated": len(long_prompts["truncated"]),
                       "prompts_skipped": len(long_prompts["skipped"]), "engine_load_seconds": load_seconds,
                       "tokens_per_second": tokens / max(seconds - load_seconds, 1e-9)}
            if name == "baseline":  # the prompt pool, recorded once per run
                metrics["duplicate_prompts_dropped"] = self.duplicate_prompts
            return ["samples.parquet"], metrics, {"long_prompts": long_prompts}

        return self.run_stage(iteration, name, {"policy": policy_digest}, config, body)

    def _annotate_stage(self, iteration, policy, generated):
        from selfplay.annotate.stage import judge_groups, judgments_table
        from selfplay.generate.stage import group_by_prompt

        recipe = self.recipe
        samples_path = self._path(iteration, "generate", "samples.parquet")

        def body(tmp):
            grouped = group_by_prompt(pq.read_table(samples_path))
            groups = [(pid, prompt, [r["text"] for r in rows]) for pid, prompt, rows in grouped]
            token_ids = [(rows[0]["prompt_token_ids"], [r["token_ids"] for r in rows]) for _, _, rows in grouped]
            judgments = judge_groups(self._judge(policy[0]), groups, desc=f"iter {iteration} annotate",
                                     token_ids=token_ids)
            table, metrics, warnings = judgments_table(groups, judgments, recipe.annotate.win_matrix,
                                                       recipe.annotate.temperature)
            pq.write_table(table, tmp / "judgments.parquet")
            for warning in warnings:
                log.warning("iter %d %s", iteration, warning)
            return ["judgments.parquet"], metrics, {"warnings": warnings}

        inputs = {"samples": generated["outputs"]["samples.parquet"]}
        if recipe.annotate.type == "selfie":  # the judge is the policy itself
            inputs["policy"] = policy[1]
        # the timeout changes no result: changing it re-judges nothing
        config = recipe.annotate.model_dump(mode="json", exclude={"timeout_seconds"})
        return self.run_stage(iteration, "annotate", inputs, {**config, **runs.judge_identity(recipe.annotate)}, body)

    def _pairs_stage(self, iteration, generated, annotated):
        from selfplay.pairs import PAIR_BUILDERS
        from selfplay.pairs.stage import build_pairs

        samples_path = self._path(iteration, "generate", "samples.parquet")
        judgments_path = self._path(iteration, "annotate", "judgments.parquet")

        def body(tmp):
            table = build_pairs(pq.read_table(samples_path), pq.read_table(judgments_path),
                                PAIR_BUILDERS[self.recipe.pairs.type])
            pq.write_table(table, tmp / "pairs.parquet")
            metrics = {"pairs": table.num_rows}
            for column in ("chosen_win_rate", "rejected_win_rate"):
                if column in table.column_names and table.num_rows:
                    metrics[f"mean_{column}"] = sum(table.column(column).to_pylist()) / table.num_rows
            return ["pairs.parquet"], metrics, {}

        return self.run_stage(iteration, "pairs", {"samples": generated["outputs"]["samples.parquet"],
                                                   "judgments": annotated["outputs"]["judgments.parquet"]},
                              self.recipe.pairs.model_dump(), body)

    def _hindsight_stage(self, iteration, policy, record_ids):
        """DRIFT: one fresh answer per DSAT record, prompted with the bad answer and the complaint."""
        from selfplay.pairs.drift import hindsight_prompt

        drift = self.recipe.drift
        prompts = [hindsight_prompt(r, drift.hindsight_template) for r in self.records]
        sampling = {"temperature": drift.temperature, "top_p": drift.top_p, "max_tokens": self.recipe.generate.max_tokens}
        return self._sample_stage(iteration, "generate", policy, record_ids, 1, sampling, "hindsight", prompts=prompts)

    def _drift_pairs_stage(self, iteration, generated):
        from selfplay.generate.stage import chat_prompt_ids
        from selfplay.pairs.drift import drift_pairs
        from selfplay.train.seed_pairs import response_token_ids

        samples_path = self._path(iteration, "generate", "samples.parquet")

        def body(tmp):
            samples = pq.read_table(samples_path).to_pylist()
            prompt_ids = {s["prompt_id"]: chat_prompt_ids(self.tokenizer, self.records[s["prompt_id"]]["prompt"])
                          for s in samples}
            rows = drift_pairs(self.records, samples, prompt_ids, lambda text: response_token_ids(self.tokenizer, text))
            pq.write_table(pa.Table.from_pylist(rows), tmp / "pairs.parquet")
            return ["pairs.parquet"], {"pairs": len(rows)}, {}

        return self.run_stage(iteration, "pairs", {"samples": generated["outputs"]["samples.parquet"]},
                              self.recipe.pairs.model_dump(), body)

    def _train_stage(self, iteration, policy, paired, name="train", config=None, reference=None):
        """Train `policy` on the stage's pairs; returns (manifest, (new policy path, digest))."""
        from selfplay.train.stage import train_policy

        config = config or self.recipe.train
        reference = reference or {"previous": policy, "initial": self.initial, "soup": self.soup}[config.reference]
        pairs_path = self._path(iteration, paired["stage"], "pairs.parquet")
        inputs = {"policy": policy[1], "reference": reference[1], "pairs": paired["outputs"]["pairs.parquet"]}
        checkpoints = self.run_dir / f"iter-{iteration:03d}" / f"{name}.checkpoints"

        def body(tmp):
            self._release_engines()
            self._make_room_on_gpus(self.gpu_needs["train"])  # the seed stage's config differs in no GPU field
            if config.checkpoint_every:
                _prepare_checkpoints(checkpoints, {"inputs": inputs, "config": config.model_dump()})
            result = train_policy(policy[0], reference[0], str(pairs_path), str(tmp / "policy"), config,
                                  str(checkpoints) if config.checkpoint_every else None)
            history = result.pop("history")
            (tmp / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
            earlier = [] if name == "seed" else [runs.StageDir(self.run_dir, 0, "seed").manifest()]
            earlier += [runs.StageDir(self.run_dir, t, "train").manifest() for t in range(1, iteration)]
            last = history[-1]
            metrics = {"loss": sum(h["loss"] for h in history) / len(history), "final_loss": last["loss"],
                       "accuracy": last["accuracy"], "steps": len(history), "pairs": result["num_pairs"],
                       "reference_seconds": result["reference_seconds"]}
            if "loss_over_eta_sq" in last:
                metrics["loss_over_eta_sq"] = sum(h["loss_over_eta_sq"] for h in history) / len(history)
            extra = {"reference": {"rule": config.reference, "path": reference[0], "digest": reference[1]},
                     # where this stage's steps start on the run-wide train-step axis (metrics.jsonl, W&B)
                     "first_global_step": sum(m["metrics"]["steps"] for m in earlier if m),
                     "schedule": {"total_steps": result["total_steps"], "warmup_steps": result["warmup_steps"],
                                  "epochs": config.epochs, "scheduler": config.scheduler,
                                  "gradient_accumulation_steps": result["gradient_accumulation_steps"]}}
            return ["policy", "history.jsonl"], metrics, extra

        trained = self.run_stage(iteration, name, inputs, config.model_dump(), body)
        shutil.rmtree(checkpoints, ignore_errors=True)
        return trained, (str(self._path(iteration, name, "policy")), trained["outputs"]["policy"])

    def _seed_stage(self) -> tuple[str, str]:
        """Plain preference training on labelled pairs before iteration 1 (iter-000/seed)."""
        from selfplay.train.seed_pairs import load_seed_pairs

        seed = self.recipe.seed_training

        def body(tmp):
            rows = load_seed_pairs(seed.path, self.tokenizer)
            pq.write_table(pa.Table.from_pylist(rows), tmp / "pairs.parquet")
            return ["pairs.parquet"], {"pairs": len(rows)}, {}

        paired = self.run_stage(0, "seed-pairs", {"seed_pairs": self._external_digest(seed.path)},
                                seed.model_dump(), body)
        config = self.recipe.seed_train_config()
        _, policy = self._train_stage(0, self.initial, paired, name="seed", config=config, reference=self.initial)
        return policy

    def _soup_reference(self) -> tuple[str, str]:
        """SALSA's reference: the weight average of train.soup, built once per run."""
        from selfplay.models import resolve_model
        from selfplay.train.reference import weight_soup

        checkpoints = [str(resolve_model(path, self.recipe.policy.seed)) for path in self.recipe.train.soup]
        inputs = {path: self._external_digest(path) for path in checkpoints}

        def body(tmp):
            weight_soup(checkpoints, tmp / "policy")
            return ["policy"], {"checkpoints": len(checkpoints)}, {"soup": checkpoints}

        manifest = self.run_stage(0, "reference-soup", inputs, {"soup": checkpoints}, body)
        return str(self._path(0, "reference-soup", "policy")), manifest["outputs"]["policy"]

    def _evaluate_stage(self, iteration, policy, eval_samples):
        from selfplay.evaluate.stage import judge_against_initial, response_stats

        recipe = self.recipe
        samples_path = self._path(iteration, "eval-gen", "samples.parquet")

        def body(tmp):
            samples = pq.read_table(samples_path)
            judge, judge_config = self._evaluation_judge(policy[0])
            metrics, table, warnings = judge_against_initial(
                judge, samples, pq.read_table(self._path(0, "baseline", "samples.parquet")),
                judge_config.win_matrix, judge_config.temperature)
            pq.write_table(table, tmp / "eval.parquet")
            metrics.update(response_stats(samples))
            runs.write_json_atomic(tmp / "metrics.json", metrics)
            for warning in warnings:
                log.warning("iter %d %s", iteration, warning)
            return ["eval.parquet", "metrics.json"], metrics, {"warnings": warnings}

        judge_config = recipe.evaluate.judge or recipe.annotate
        return self.run_stage(iteration, "evaluate", {"policy_samples": eval_samples["outputs"]["samples.parquet"],
                                                      "initial_samples": self.baseline["outputs"]["samples.parquet"]},
                              {**judge_config.model_dump(mode="json", exclude={"timeout_seconds"}),
                               **runs.judge_identity(judge_config)}, body)
