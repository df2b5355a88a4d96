"""Metrics sinks: metrics.jsonl in the run directory (the source of truth) and W&B, its mirror.

Every stage writes one block to metrics.jsonl when it is committed: its per-step train rows (if
any) and then its stage row, in one append. W&B logs row n of metrics.jsonl at step n, so the
W&B history is a copy of the file that a crash cannot leave with holes or duplicates:
- a stage found done on resume whose block never reached metrics.jsonl (the driver died between
  the commit and the append) has its block written then (`record` is idempotent per stage result,
  keyed by the manifest's `started_at`);
- a partly written last block (killed mid-append) is dropped at start and written again whole;
- on start the rows W&B does not hold yet are logged again: offline, from the earlier offline
  files of the same run (read back with `wandb_offline`); online, from the resumed run's step
  (W&B ignores a step below the run's current one, so a row is never counted twice).

One W&B run per selfplay run; its id is kept in run.json so a resumed run continues it, and a
fork is a new run in its parent's group whose config names the parent run and iteration.
`iteration` is the x-axis of the stage metrics, `train_step/global_step` that of the train curves.
"""

import json
import os
from pathlib import Path

from selfplay.track.wandb_offline import find_run_files, read_history

STEP_STAGE = "train_step"  # per-optimizer-step rows of the train and seed stages


def read_rows(text: str) -> list[dict]:
    """The complete rows of metrics.jsonl's text (a torn last line is ignored)."""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def complete_blocks(rows: list[dict]) -> list[dict]:
    """Drop trailing step rows whose stage row never got written (a block cut by a crash)."""
    finished = {row.get("started_at") for row in rows if row["stage"] != STEP_STAGE}
    end = len(rows)
    while end and rows[end - 1]["stage"] == STEP_STAGE and rows[end - 1].get("started_at") not in finished:
        end -= 1
    return rows[:end]


def wandb_row(row: dict) -> dict:
    """The W&B keys of a metrics.jsonl row: `<stage>/<metric>` by iteration, `train_step/*` by step."""
    numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k not in ("iteration", "started_at")}
    if row["stage"] == STEP_STAGE:  # `step` counts within the stage; global_step is the axis
        return {"train_step/iteration": row["iteration"],
                **{f"train_step/{k}": v for k, v in numbers.items() if k != "step"}}
    return {"iteration": row["iteration"], **{f"{row['stage']}/{k}": v for k, v in numbers.items()}}


class Tracker:
    def __init__(self, run_dir: Path, run_info: dict, recipe, resolved_config: dict):
        self.metrics_path = Path(run_dir) / "metrics.jsonl"
        text = self.metrics_path.read_text() if self.metrics_path.exists() else ""
        raw = read_rows(text)
        self.rows = complete_blocks(raw)
        if text and (len(self.rows) != len(raw) or not text.endswith("\n")):
            self._rewrite()
        self.recorded = {(r["iteration"], r["stage"], r.get("started_at")) for r in self.rows}
        self.wandb_run = None
        if recipe.tracking.wandb:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            os.environ.setdefault("WANDB_MODE", recipe.tracking.mode)
            earlier = find_run_files(run_dir)  # before init adds this session's file
            self.wandb_run = wandb.init(project=recipe.tracking.project, entity=recipe.tracking.entity,
                                        group=recipe.tracking.group or run_info["name"], name=run_info["name"],
                                        id=run_info["wandb_run_id"], resume="allow", dir=str(run_dir),
                                        config={**resolved_config, "selfplay": {
                                            "run_id": run_info["run_id"], "parent": run_info.get("parent")}})
            self.wandb_run.define_metric("iteration")
            self.wandb_run.define_metric("*", step_metric="iteration")
            self.wandb_run.define_metric("train_step/global_step")
            self.wandb_run.define_metric("train_step/*", step_metric="train_step/global_step")
            self._mirror(self._rows_in_wandb(earlier))

    def _rewrite(self) -> None:
        tmp = self.metrics_path.with_name(self.metrics_path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in self.rows))
        os.replace(tmp, self.metrics_path)

    def _rows_in_wandb(self, earlier_files: list[Path]) -> int:
        """How many leading rows of metrics.jsonl the W&B run already holds."""
        if self.wandb_run.settings.mode != "offline":
            return int(self.wandb_run.step or 0)  # a resumed online run continues after its last step
        steps = [row["_step"] for path in earlier_files for row in read_history(path) if "_step" in row]
        return max(steps) + 1 if steps else 0

    def _mirror(self, start: int) -> None:
        for index in range(start, len(self.rows)):
            self.wandb_run.log(wandb_row(self.rows[index]), step=index)

    def record(self, iteration: int, stage: str, metrics: dict, started_at: float,
               steps: list[dict] = ()) -> None:
        """Append a committed stage's rows (its train steps, then the stage row) unless this stage
        result (same `started_at`) is already in metrics.jsonl, then mirror them to W&B."""
        if (iteration, stage, started_at) in self.recorded:
            return
        block = [{"iteration": iteration, "stage": STEP_STAGE, "started_at": started_at, **step} for step in steps]
        block.append({"iteration": iteration, "stage": stage, "started_at": started_at, **metrics})
        with open(self.metrics_path, "a") as handle:
            handle.write("".join(json.dumps(row, default=float) + "\n" for row in block))
        self.recorded.add((iteration, stage, started_at))
        first = len(self.rows)
        self.rows.extend(block)
        if self.wandb_run is not None:
            self._mirror(first)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
