"""Metrics sinks: metrics.jsonl in the run directory (always) and W&B (unless disabled).

One W&B run per selfplay run; its id is kept in run.json so a resumed run continues it, and a
fork is a new run in its parent's group whose config names the parent run and iteration.
`iteration` is the x-axis of every metric.
"""

import json
import os
from pathlib import Path


class Tracker:
    def __init__(self, run_dir: Path, run_info: dict, recipe, resolved_config: dict):
        self.metrics_path = Path(run_dir) / "metrics.jsonl"
        self.wandb_run = None
        if recipe.tracking.wandb:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            os.environ.setdefault("WANDB_MODE", recipe.tracking.mode)
            self.wandb_run = wandb.init(project=recipe.tracking.project, entity=recipe.tracking.entity,
                                        group=recipe.tracking.group or run_info["name"], name=run_info["name"],
                                        id=run_info["wandb_run_id"], resume="allow", dir=str(run_dir),
                                        config={**resolved_config, "selfplay": {
                                            "run_id": run_info["run_id"], "parent": run_info.get("parent")}})
            self.wandb_run.define_metric("iteration")
            self.wandb_run.define_metric("*", step_metric="iteration")
            self.wandb_run.define_metric("train_step/global_step")
            self.wandb_run.define_metric("train_step/*", step_metric="train_step/global_step")

    def record(self, iteration: int, stage: str, metrics: dict, log_wandb: bool = True) -> None:
        line = {"iteration": iteration, "stage": stage, **metrics}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(line, default=float) + "\n")
        if self.wandb_run is not None and log_wandb:
            flat = {f"{stage}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.wandb_run.log({"iteration": iteration, **flat})

    def log_train_steps(self, iteration: int, history: list[dict], first_global_step: int) -> None:
        """Per-optimizer-step curves (loss, rewards, lr) on a run-wide step axis."""
        if self.wandb_run is None:
            return
        for offset, record in enumerate(history):
            self.wandb_run.log({"train_step/global_step": first_global_step + offset, "train_step/iteration": iteration,
                                **{f"train_step/{k}": v for k, v in record.items()
                                   if isinstance(v, (int, float)) and k != "step"}})

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
