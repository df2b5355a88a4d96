"""A stage made of a function, for tests of pipeline.run_stage without engines."""

from collections.abc import Callable
from dataclasses import dataclass

from selfplay.pipeline import StageResult


@dataclass
class BodyStage:
    """body(tmp) -> (output names, metrics, extra manifest fields)."""

    iteration: int
    name: str
    given_inputs: dict
    given_config: dict
    body: Callable
    produces = ()

    def inputs(self, ctx) -> dict:
        return self.given_inputs

    def config(self, ctx) -> dict:
        return self.given_config

    def run(self, ctx, tmp) -> StageResult:
        outputs, metrics, extra = self.body(tmp)
        return StageResult(outputs, metrics, extra)


class RecordingTracker:
    """A tracker that remembers which stages it recorded (no metrics.jsonl, no W&B)."""

    def __init__(self):
        self.lines = []

    def record(self, iteration, stage, metrics, started_at, steps=()):
        self.lines.append((iteration, stage))

    def log_stage_artifacts(self, run_dir, iteration, stage, manifest):
        pass

    def wants_examples(self, iteration):
        return False

    def log_examples(self, iteration, rows):
        pass
