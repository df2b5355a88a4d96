"""Metrics sinks: metrics.jsonl in the run directory (the source of truth) and W&B, its mirror.

Every stage writes one block to metrics.jsonl when it is committed: its per-step train rows (if
any) and then its stage row, in one append. W&B logs row n of metrics.jsonl at step n, so the
W&B history is a copy of the file that a crash cannot leave with holes or duplicates:
- a stage found done on resume whose block never reached metrics.jsonl (the driver died between
  the commit and the append) has its block written then (`record` is idempotent per stage result,
  keyed by the manifest's `started_at`);
- a partly written last block (killed mid-append) is dropped at start and written again whole;
- a damaged line (edited, a bad disk block) is dropped with its block, and the block is written
  again from the stage's manifest when the stage is found done (a superseded result's row is lost);
- on start the rows W&B does not hold yet are logged again: offline, from the earlier offline
  files of the same run (read back with `wandb_offline`); online, from the resumed run's step
  (W&B ignores a step below the run's current one, so a row is never counted twice).

One W&B run per selfplay run; its id is kept in run.json so a resumed run continues it. All
runs of a recipe family share one W&B group (tracking.group, else the run's name; a fork gets
its parent's group from lineage.create_fork) and a fork's config names its parent run and
iteration. `iteration` is the x-axis of the stage metrics and of the examples Table,
`train_step/global_step` that of the train curves; each key gets its axis by name as it is
first logged (no overlapping globs: with "*" and "train_step/*" both defined, W&B took "*" for
train-step keys and stamped a stale `iteration` into every train-step row).

Beyond the rows (all no-ops when tracking.wandb is false):
- `log_stage_artifacts`: reference artifacts of policies, samples and pairs with the use links
  of forks (wandb_artifacts.py);
- `log_examples`: a Table of example generations per iteration under `examples`, logged at the
  W&B step of that iteration's last metrics row. Its rows are kept in `<run>/wandb_examples.jsonl`
  (journal.py) so that the row replay above logs the table again with its row whenever W&B lost it.
"""

import json
import logging
import os
from pathlib import Path

from selfplay.track.journal import append_journal, read_journal
from selfplay.track.wandb_offline import find_run_files, read_history

log = logging.getLogger("selfplay")

STEP_STAGE = "train_step"  # per-optimizer-step rows of the train and seed stages
STEP_AXIS = "train_step/global_step"
EXAMPLES_KEY = "examples"
EXAMPLE_COLUMNS = ["iteration", "prompt_id", "prompt", "response", "score"]


def read_rows(text: str) -> tuple[list[dict], list[int]]:
    """The rows of metrics.jsonl's text and the numbers of its damaged lines (not a JSON object
    with an iteration and a stage). A torn last line is ignored, not counted: a crash mid-append."""
    rows, damaged = [], []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if not line.endswith("\n"):
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("stage"), str) and isinstance(row.get("iteration"), int):
            rows.append(row)
        else:
            damaged.append(number)
    return rows, damaged


def complete_blocks(rows: list[dict]) -> list[dict]:
    """Drop step rows whose stage row is not in the file (a block cut by a crash, or whose stage
    row was damaged): the stage's whole block is recorded again when it is found done."""
    finished = {row.get("started_at") for row in rows if row["stage"] != STEP_STAGE}
    return [row for row in rows if row["stage"] != STEP_STAGE or row.get("started_at") in finished]


def axis_of(key: str) -> str | None:
    """The x-axis a W&B key is plotted against (None for the two axes themselves)."""
    if key in ("iteration", STEP_AXIS):
        return None
    return STEP_AXIS if key.startswith(f"{STEP_STAGE}/") else "iteration"


def examples_table(iteration: int, rows: list[dict]):
    """A wandb.Table of one iteration's example generations: {prompt_id, prompt, response, score?}."""
    import wandb

    missing = [key for key in ("prompt_id", "prompt", "response") if any(key not in row for row in rows)]
    if missing:
        raise ValueError(f"log_examples: every row needs prompt_id, prompt and response; missing {missing[0]!r}")
    return wandb.Table(columns=EXAMPLE_COLUMNS, allow_mixed_types=True,
                       data=[[iteration, r["prompt_id"], r["prompt"], r["response"], r.get("score")] for r in rows])


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
        raw, damaged = read_rows(text)
        self.rows = complete_blocks(raw)
        if damaged:  # metrics.jsonl is derived from the manifests: what is lost is recorded again
            log.warning("%s: %d damaged line(s) dropped (line %s); the rows of each finished stage are recorded "
                        "again from its manifest", self.metrics_path, len(damaged), ", ".join(map(str, damaged[:5])))
        if text and (damaged or len(self.rows) != len(raw) or not text.endswith("\n")):
            self._rewrite()
        self.recorded = {(r["iteration"], r["stage"], r.get("started_at")) for r in self.rows}
        self.wandb_run = self.artifacts = None
        self.examples_path = self.metrics_path.with_name("wandb_examples.jsonl")
        self.examples = {}  # W&B step -> (iteration, rows)
        self.defined = set()  # keys whose x-axis this session declared
        self.open_step = None  # the step this session logged last: W&B still accepts keys for it
        if recipe.tracking.wandb:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            os.environ.setdefault("WANDB_MODE", recipe.tracking.mode)
            # A wandb-core service inherited from the process that started us (a notebook, a test
            # process) outlives a SIGKILLed driver with its run still open, and refuses the resumed
            # run's id as "in use": this driver's run lives in a service of its own, which dies with it.
            if os.environ.pop("WANDB_SERVICE", None):
                log.debug("W&B: not joining the inherited wandb-core service (WANDB_SERVICE)")
            earlier = find_run_files(run_dir)  # before init adds this session's file
            self.wandb_run = wandb.init(project=recipe.tracking.project, entity=recipe.tracking.entity,
                                        group=recipe.tracking.group or run_info["name"], name=run_info["name"],
                                        id=run_info["wandb_run_id"], resume="allow", dir=str(run_dir),
                                        config={**resolved_config, "selfplay": {
                                            "run_id": run_info["run_id"], "parent": run_info.get("parent")}})
            from selfplay.track.wandb_artifacts import ArtifactLog

            for entry in read_journal(self.examples_path):
                step = entry["step"]
                if step < len(self.rows) and self.rows[step]["iteration"] == entry["iteration"]:
                    self.examples[step] = (entry["iteration"], entry["rows"])
            self._define(["iteration", STEP_AXIS, EXAMPLES_KEY])
            self._mirror(self._rows_in_wandb(earlier))
            if self.wandb_run.settings.mode != "disabled":  # WANDB_MODE=disabled: W&B accepts and drops all
                self.artifacts = ArtifactLog(self.wandb_run, run_dir, run_info, earlier)

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

    def _define(self, keys) -> None:
        for key in keys:
            if key not in self.defined:
                self.wandb_run.define_metric(key, step_metric=axis_of(key))
                self.defined.add(key)

    def _mirror(self, start: int) -> None:
        for index in range(start, len(self.rows)):
            data = wandb_row(self.rows[index])
            if index in self.examples:  # a table W&B lost with its row
                data[EXAMPLES_KEY] = examples_table(*self.examples[index])
            self._define(data)
            self.wandb_run.log(data, step=index)
            self.open_step = index

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

    def log_stage_artifacts(self, run_dir: Path, iteration: int, stage: str, manifest: dict) -> None:
        """After a stage is committed (or found done on resume): its policy, samples or pairs as a
        W&B reference artifact, and use links to the ancestor runs' artifacts among its inputs
        (wandb_artifacts.py). Once per stage result, whatever crashed in between."""
        if self.artifacts is not None:
            self.artifacts.log_stage(run_dir, iteration, stage, manifest)

    def wants_examples(self, iteration: int) -> bool:
        """Whether log_examples(iteration, ...) would log anything: a resume of a finished run
        then reads no samples to build rows W&B already has."""
        return self.wandb_run is not None and self._examples_step(iteration) not in self.examples

    def _examples_step(self, iteration: int) -> int | None:
        return next((i for i in range(len(self.rows) - 1, -1, -1) if self.rows[i]["iteration"] == iteration
                     and self.rows[i]["stage"] != STEP_STAGE), None)

    def log_examples(self, iteration: int, rows: list[dict]) -> None:
        """A Table of example generations ({prompt_id, prompt, response, score?} for the same eval
        prompts each iteration) under `examples`, at the W&B step of the iteration's last
        metrics row. Call it right after that row is recorded (the evaluate stage's record):
        W&B accepts keys only for the step it holds open; an older step is skipped with a warning.
        Once per row: on resume the row replay logs it again if W&B lost it."""
        if self.wandb_run is None:
            return
        step = self._examples_step(iteration)
        if step in self.examples:
            return
        table = examples_table(iteration, rows)  # checks the rows before anything is written
        if step is None or step != self.open_step:
            log.warning("W&B: examples of iteration %d not logged: its metrics row is not the last one W&B "
                        "holds open (log_examples must follow that row's record())", iteration)
            return
        append_journal(self.examples_path, {"step": step, "iteration": iteration, "rows": rows})
        self.examples[step] = (iteration, rows)
        self._define([EXAMPLES_KEY])
        self.wandb_run.log({EXAMPLES_KEY: table}, step=step)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
