"""The iteration loop: for t = 1..T, generate -> annotate -> pairs -> train -> evaluate.

Each stage is `run_stage(...)`: skipped when its manifest is done with the same inputs and
config, otherwise run into a temporary folder and committed (runs.py). Resume is therefore
"run again". The driver only walks stages, holds the long-lived engines and judge, and
records timings; the science lives in the stage modules.
"""

import logging
import shutil
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq

from selfplay import runs
from selfplay.recipe import Recipe, recipe_to_yaml

log = logging.getLogger("selfplay")


class RecipeChangedError(ValueError):
    pass


def _is_worker_failure(error: Exception) -> bool:
    """A dead actor or worker process (preemption, OOM kill): worth a bounded retry."""
    import ray.exceptions

    return isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                              ray.exceptions.NodeDiedError))


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _prepare_checkpoints(folder: Path, key: dict) -> None:
    """Keep in-stage training checkpoints only if they belong to the same inputs and config."""
    key_path = folder / "key.json"
    if folder.exists() and (not key_path.exists() or runs.read_json(key_path) != runs.digest_of(key)):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_json_atomic(key_path, runs.digest_of(key))


def changed_keys(old: dict, new: dict) -> list[str]:
    old, new = _flatten(old), _flatten(new)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def init_run_dir(run_dir: Path, recipe: Recipe, allow_changes: bool = False) -> dict:
    """Create run.json and recipe.yaml, or check that an existing run has the same recipe."""
    resolved = recipe.model_dump(mode="json")
    info_path = run_dir / "run.json"
    if info_path.exists():
        info = runs.read_json(info_path)
        changes = changed_keys(info["recipe"], resolved)
        if changes and not allow_changes:
            raise RecipeChangedError(f"{run_dir}: recipe differs from the run's frozen recipe in: {', '.join(changes)} "
                                     f"(use --allow-changes to accept, or fork the run)")
        if changes:
            info.setdefault("recipe_changes", []).append({"at": time.time(), "keys": changes, "previous": info["recipe"]})
            info["recipe"] = resolved
            runs.write_json_atomic(info_path, info)
            (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
        return info
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"run_id": uuid.uuid4().hex[:12], "name": recipe.name, "created": time.time(), "parent": None,
            "recipe": resolved, "recipe_digest": runs.digest_of(resolved)}
    info["wandb_run_id"] = f"{recipe.name}-{info['run_id']}"
    (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    runs.write_json_atomic(info_path, info)
    return info


class Driver:
    def __init__(self, recipe: Recipe, run_dir: Path, ray_address: str | None = None, allow_changes: bool = False):
        self.recipe = recipe
        self.run_dir = Path(run_dir).resolve()
        self.ray_address = ray_address
        self.allow_changes = allow_changes
        self.pool = None
        self.model_judge = None
        self.summary = []

    # -- stage bookkeeping ---------------------------------------------------------------
    def run_stage(self, iteration: int, name: str, inputs: dict, config: dict, body) -> dict:
        """body(tmp_dir) -> (output names, metrics, extra manifest fields)."""
        stage = runs.StageDir(self.run_dir, iteration, name)
        config_digest = runs.digest_of(config)
        if stage.is_done(inputs, config_digest):
            log.info("iter %d %-9s done earlier, skipped", iteration, name)
            return stage.manifest()
        failed_path = stage.path.with_name(name + ".failed.json")
        started = time.time()
        for attempt in range(self.recipe.max_stage_retries + 1):
            tmp = stage.begin()
            log.info("iter %d %-9s running%s", iteration, name, f" (retry {attempt})" if attempt else "")
            try:
                outputs, metrics, extra = body(tmp)
                break
            except Exception as error:
                runs.write_json_atomic(failed_path, {"error": f"{type(error).__name__}: {error}"[:2000],
                                                     "attempt": attempt, "at": time.time()})
                if not _is_worker_failure(error) or attempt == self.recipe.max_stage_retries:
                    raise
                log.warning("iter %d %-9s: a Ray worker died (%s); retrying", iteration, name, type(error).__name__)
                self._drop_actors()
        seconds = time.time() - started
        failed_path.unlink(missing_ok=True)
        manifest = {"iteration": iteration, "stage": name, "inputs": inputs, "config": config,
                    "config_digest": config_digest, "started_at": started, "seconds": seconds,
                    "metrics": metrics, "packages": self.packages, "code_version": self.code_version,
                    "run_id": self.info["run_id"], **extra}
        manifest = stage.commit(outputs, manifest)
        self.tracker.record(iteration, name, {**metrics, "seconds": seconds})
        log.info("iter %d %-9s finished in %.1f s", iteration, name, seconds)
        return manifest

    def _engines(self, policy_path: str):
        from selfplay.generate.pool import EnginePool

        if self.pool is None:
            self.pool = EnginePool(policy_path, self.recipe.generate, self.recipe.policy.dtype, self.recipe.seed)
            self.pool.loaded = policy_path
        elif self.pool.loaded != policy_path:
            self.pool.load_policy(policy_path)
            self.pool.loaded = policy_path
        return self.pool

    def _drop_actors(self):
        """Forget actors that may be dead so the retry starts fresh ones."""
        for holder in ("pool", "model_judge"):
            actor = getattr(self, holder)
            if actor is not None:
                try:
                    actor.shutdown()
                except Exception:  # already dead
                    pass
                setattr(self, holder, None)

    def _release_engines(self):
        if self.pool is not None and not self.recipe.generate.keep_engine:
            self.pool.shutdown()
            self.pool = None

    def _judge(self, policy_path: str):
        from selfplay.annotate.stage import make_judge

        if self.recipe.annotate.type == "selfie":  # judges with the current policy: new each iteration
            return make_judge(self.recipe.annotate, policy_path, self.recipe.policy.seed)
        if self.model_judge is None:
            self.model_judge = make_judge(self.recipe.annotate, policy_path, self.recipe.policy.seed)
        return self.model_judge

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> list[dict]:
        from selfplay.cluster import start_ray
        from selfplay.models import resolve_model
        from selfplay.prompts import load_prompts, split_prompts
        from selfplay.track.tracker import Tracker

        recipe = self.recipe
        with runs.RunLock(self.run_dir):
            self.info = init_run_dir(self.run_dir, recipe, self.allow_changes)
            self.packages, self.code_version = runs.package_versions(), runs.code_version()
            initial_policy = str(resolve_model(recipe.policy.path, recipe.policy.seed))
            prompts = load_prompts(recipe.prompts.path, recipe.prompts.field)
            eval_ids, slices = split_prompts(len(prompts), recipe.iterations, recipe.prompts.per_iteration,
                                             recipe.prompts.eval_size, recipe.prompts.shuffle_seed, recipe.prompts.reuse)
            self.tracker = Tracker(self.run_dir, self.info, recipe, self.info["recipe"])
            start_ray(self.ray_address, recipe.generate.replicas + recipe.train.world_size + 1)
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(initial_policy)
            self.prompts = prompts
            try:
                self._run_iterations(initial_policy, eval_ids, slices)
            finally:
                self.tracker.finish()
                if self.pool is not None:
                    self.pool.shutdown()
        return self.summary

    def _sample_stage(self, iteration, name, policy_path, policy_digest, prompt_ids, n, sampling, purpose, extra_inputs=None):
        """A stage that samples n responses per prompt into samples.parquet."""
        from selfplay.generate.stage import generate_samples

        config = {"prompt_ids": prompt_ids, "n": n, **sampling, "seed": self.recipe.seed, "purpose": purpose,
                  "engine": self.recipe.generate.model_dump(include={"replicas", "tensor_parallel_size", "max_model_len"}),
                  "dtype": self.recipe.policy.dtype}

        def body(tmp):
            started = time.time()
            pool = self._engines(policy_path)
            load_seconds = time.time() - started
            table = generate_samples(pool, self.tokenizer, prompt_ids, self.prompts, n=n, run_seed=self.recipe.seed,
                                     iteration=iteration, purpose=purpose, **sampling)
            pq.write_table(table, tmp / "samples.parquet")
            tokens = sum(len(t) for t in table.column("token_ids").to_pylist())
            seconds = time.time() - started
            return ["samples.parquet"], {"samples": table.num_rows, "prompts": len(prompt_ids), "tokens": tokens,
                                         "engine_load_seconds": load_seconds,
                                         "tokens_per_second": tokens / max(seconds - load_seconds, 1e-9)}, {}

        return self.run_stage(iteration, name, {"policy": policy_digest, **(extra_inputs or {})}, config, body)

    def _soup_reference(self) -> tuple[str, str]:
        """SALSA's reference: the weight average of train.soup, built once per run."""
        from selfplay.models import resolve_model
        from selfplay.train.reference import weight_soup

        checkpoints = [str(resolve_model(path, self.recipe.policy.seed)) for path in self.recipe.train.soup]
        inputs = {path: runs.digest_of(runs.hash_tree(Path(path))) for path in checkpoints}

        def body(tmp):
            weight_soup(checkpoints, tmp / "policy")
            return ["policy"], {"checkpoints": len(checkpoints)}, {"soup": checkpoints}

        manifest = self.run_stage(0, "reference-soup", inputs, {"soup": checkpoints}, body)
        return str(self.run_dir / "iter-000" / "reference-soup" / "policy"), manifest["outputs"]["policy"]

    def _run_iterations(self, initial_policy, eval_ids, slices):
        from selfplay.annotate.stage import judge_groups, judgments_table
        from selfplay.evaluate.stage import response_stats, win_rate_vs_initial
        from selfplay.generate.stage import group_by_prompt
        from selfplay.pairs import PAIR_BUILDERS
        from selfplay.pairs.stage import build_pairs
        from selfplay.train.stage import train_policy

        recipe = self.recipe
        gen = recipe.generate
        eval_sampling = {"temperature": recipe.evaluate.temperature, "top_p": recipe.evaluate.top_p,
                         "max_tokens": recipe.evaluate.max_tokens or gen.max_tokens}
        initial_digest = runs.digest_of(runs.hash_tree(Path(initial_policy)))
        baseline = self._sample_stage(0, "baseline", initial_policy, initial_digest, eval_ids,
                                      recipe.evaluate.samples_per_prompt, eval_sampling, "eval")
        baseline_path = self.run_dir / "iter-000" / "baseline" / "samples.parquet"
        baseline_stats = response_stats(pq.read_table(baseline_path))
        self.summary = [{"iteration": 0, "win_rate_vs_initial": 0.5, **baseline_stats, "loss": None, "seconds": {}}]

        soup = self._soup_reference() if recipe.train.reference == "soup" else None
        policy_path, policy_digest = initial_policy, initial_digest
        for iteration in range(1, recipe.iterations + 1):
            seconds = {}
            sampling = {"temperature": gen.temperature, "top_p": gen.top_p, "max_tokens": gen.max_tokens}
            generated = self._sample_stage(iteration, "generate", policy_path, policy_digest, slices[iteration - 1],
                                           gen.samples_per_prompt, sampling, "train")
            seconds["generate"] = generated["seconds"]
            samples_path = self.run_dir / f"iter-{iteration:03d}" / "generate" / "samples.parquet"

            def annotate_body(tmp):
                groups = [(pid, prompt, [r["text"] for r in rows])
                          for pid, prompt, rows in group_by_prompt(pq.read_table(samples_path))]
                judge = self._judge(policy_path)
                judgments = judge_groups(judge, groups, desc=f"iter {iteration} annotate")
                table = judgments_table(groups, judgments, recipe.annotate.win_matrix, recipe.annotate.temperature)
                pq.write_table(table, tmp / "judgments.parquet")
                return ["judgments.parquet"], {"prompts": table.num_rows}, {}

            annotate_inputs = {"samples": generated["outputs"]["samples.parquet"]}
            if recipe.annotate.type == "selfie":
                annotate_inputs["policy"] = policy_digest
            annotated = self.run_stage(iteration, "annotate", annotate_inputs,
                                       recipe.annotate.model_dump(mode="json"), annotate_body)
            seconds["annotate"] = annotated["seconds"]
            judgments_path = self.run_dir / f"iter-{iteration:03d}" / "annotate" / "judgments.parquet"

            def pairs_body(tmp):
                table = build_pairs(pq.read_table(samples_path), pq.read_table(judgments_path),
                                    PAIR_BUILDERS[recipe.pairs.type])
                pq.write_table(table, tmp / "pairs.parquet")
                metrics = {"pairs": table.num_rows}
                if "chosen_win_rate" in table.column_names and table.num_rows:
                    metrics["mean_chosen_win_rate"] = float(sum(table.column("chosen_win_rate").to_pylist()) / table.num_rows)
                    metrics["mean_rejected_win_rate"] = float(sum(table.column("rejected_win_rate").to_pylist()) / table.num_rows)
                return ["pairs.parquet"], metrics, {}

            paired = self.run_stage(iteration, "pairs", {"samples": generated["outputs"]["samples.parquet"],
                                                         "judgments": annotated["outputs"]["judgments.parquet"]},
                                    recipe.pairs.model_dump(), pairs_body)
            seconds["pairs"] = paired["seconds"]
            pairs_path = self.run_dir / f"iter-{iteration:03d}" / "pairs" / "pairs.parquet"

            reference_path, reference_digest = {"previous": (policy_path, policy_digest),
                                                "initial": (initial_policy, initial_digest),
                                                "soup": soup}[recipe.train.reference]
            train_inputs = {"policy": policy_digest, "reference": reference_digest,
                            "pairs": paired["outputs"]["pairs.parquet"]}
            checkpoints = self.run_dir / f"iter-{iteration:03d}" / "train.checkpoints"

            def train_body(tmp):
                self._release_engines()
                _prepare_checkpoints(checkpoints, {"inputs": train_inputs, "config": recipe.train.model_dump()})
                result = train_policy(policy_path, reference_path, str(pairs_path), str(tmp / "policy"), recipe.train,
                                      str(checkpoints) if recipe.train.checkpoint_every else None)
                history = result.pop("history")
                (tmp / "history.jsonl").write_text("".join(runs.json.dumps(h) + "\n" for h in history))
                last = history[-1]
                metrics = {"loss": sum(h["loss"] for h in history) / len(history), "final_loss": last["loss"],
                           "accuracy": last["accuracy"], "steps": len(history), "pairs": result["num_pairs"],
                           "reference_seconds": result["reference_seconds"]}
                if "loss_over_eta_sq" in last:
                    metrics["loss_over_eta_sq"] = sum(h["loss_over_eta_sq"] for h in history) / len(history)
                extra = {"reference": {"rule": recipe.train.reference, "path": reference_path, "digest": reference_digest},
                         "schedule": {"total_steps": result["total_steps"], "warmup_steps": result["warmup_steps"],
                                      "epochs": recipe.train.epochs,
                                      "gradient_accumulation_steps": result["gradient_accumulation_steps"]}}
                return ["policy", "history.jsonl"], metrics, extra

            trained = self.run_stage(iteration, "train", train_inputs, recipe.train.model_dump(), train_body)
            shutil.rmtree(checkpoints, ignore_errors=True)
            seconds["train"] = trained["seconds"]
            policy_path = str(self.run_dir / f"iter-{iteration:03d}" / "train" / "policy")
            policy_digest = trained["outputs"]["policy"]

            eval_samples = self._sample_stage(iteration, "eval-gen", policy_path, policy_digest, eval_ids,
                                              recipe.evaluate.samples_per_prompt, eval_sampling, "eval")
            eval_samples_path = self.run_dir / f"iter-{iteration:03d}" / "eval-gen" / "samples.parquet"

            def evaluate_body(tmp):
                samples = pq.read_table(eval_samples_path)
                win_rate, table = win_rate_vs_initial(self._judge(policy_path), samples, pq.read_table(baseline_path),
                                                      recipe.annotate.win_matrix, recipe.annotate.temperature)
                pq.write_table(table, tmp / "eval.parquet")
                metrics = {"win_rate_vs_initial": win_rate, **response_stats(samples)}
                runs.write_json_atomic(tmp / "metrics.json", metrics)
                return ["eval.parquet", "metrics.json"], metrics, {}

            evaluated = self.run_stage(iteration, "evaluate", {"policy_samples": eval_samples["outputs"]["samples.parquet"],
                                                               "initial_samples": baseline["outputs"]["samples.parquet"]},
                                       recipe.annotate.model_dump(mode="json"), evaluate_body)
            seconds["evaluate"] = eval_samples["seconds"] + evaluated["seconds"]
            row = {"iteration": iteration, **evaluated["metrics"], "loss": trained["metrics"]["loss"], "seconds": seconds}
            self.summary.append(row)
