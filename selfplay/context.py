"""RunContext: what every stage of one run reads, built once by the driver.

It holds the run's paths, recipe, prompts, tokenizer, tracker and long-lived actors, and answers
the questions a stage asks about the run directory:
- `artifact(iteration, stage, name)`: a committed output with its recorded digest;
- `latest(stage, name)`: the artifact of a name that an earlier stage of its iteration made;
- `earlier_iterations(stage, name, made_by)`: those the named stages committed in the iterations
  before it (the previous evaluation's samples, the train steps already taken);
- `policy(source, iteration)`: which policy a stage samples from or trains (the initial one, the
  one entering the iteration, the one the iteration trained, the soup reference), by the rule
  in lineage.py that forks use too.
A stage reads other stages' outputs only through these, and puts their digests in its inputs.
A stage test builds one with only the fields it needs (everything has a default).
"""

from dataclasses import dataclass, field
from pathlib import Path

from selfplay import lineage, runs
from selfplay.artifacts import Artifact
from selfplay.stage_names import POLICY_FOLDER, REFERENCE_SOUP


@dataclass
class RunContext:
    run_dir: Path
    recipe: object
    tracker: object = None
    info: dict = field(default_factory=dict)  # run.json
    tokenizer: object = None
    actors: object = None  # selfplay.actors.Actors
    prompts: list = field(default_factory=list)
    records: list | None = None  # the prompt records of a pair rule that reads them (DRIFT's DSAT records)
    duplicate_prompts: int = 0
    eval_ids: list = field(default_factory=list)
    slices: list = field(default_factory=list)  # prompt ids of each iteration
    initial: Artifact | None = None  # the initial policy (recipe policy.path)
    first_iteration: int = 1  # a fork's first own iteration
    fork_start: tuple | None = None  # (path, digest) of the policy a fork starts from
    packages: dict = field(default_factory=dict)
    code_version: str = "unknown"
    change_note: dict | None = None  # what this command changed in the recipe, for superseded/ reasons
    running: tuple | None = None  # (iteration, stage) last entered: what an interrupt stopped
    start_cluster: object = None  # Ray's start, left to the first stage that runs (a finished run resumed)

    def artifact(self, iteration: int, stage: str, name: str) -> Artifact:
        manifest = runs.StageDir(self.run_dir, iteration, stage).manifest()
        if manifest is None or name not in manifest["outputs"]:
            raise RuntimeError(f"iteration {iteration} stage {stage} has no committed {name}")
        return Artifact(runs.StageDir(self.run_dir, iteration, stage).path / name, manifest["outputs"][name],
                        manifest["output_files"].get(name, {}), manifest.get("metrics") or {})

    def latest(self, stage, name: str) -> Artifact:
        """The `name` artifact of the last stage before `stage` in its iteration that makes one:
        the samples annotate judges, the judgments pairs are built from."""
        from selfplay import pipeline

        listed = pipeline.stages(self.recipe, stage.iteration, forked=self.fork_start is not None)
        names = [s.name for s in listed]
        for producer in reversed(listed[:names.index(stage.name)]):
            if name in producer.produces:
                return self.artifact(stage.iteration, producer.name, name)
        raise RuntimeError(f"iteration {stage.iteration}: no stage before {stage.name} makes {name}")

    def earlier_iterations(self, stage, name: str, made_by: tuple[str, ...]) -> list[Artifact]:
        """The committed `name` artifacts of the stages named `made_by` in the iterations before
        `stage`'s (from 0; a fork's shared ones included), oldest first: the previous
        evaluation's samples, the train steps taken before. Found by what is committed, not by
        the recipe's pipeline: a fork or an accepted change of `evaluate.every` keeps the
        evaluations made under the old setting."""
        return [self.artifact(iteration, producer, name) for iteration in range(stage.iteration) for producer in made_by
                if runs.StageDir(self.run_dir, iteration, producer).manifest() is not None]

    def inputs_as_committed(self, stage, inputs: dict, added: str, read_unchanged) -> dict:
        """`inputs` without the `added` key, when the stage was committed before it declared that
        input, with all its other inputs and its config as they are now, and
        `read_unchanged(manifest)` says that what the input stands for is what the committed
        stage read. A new declaration alone must not redo every finished run's stages (on GPUs,
        its training); a change of what is read still does (the committed format is then
        replaced)."""
        manifest = runs.StageDir(self.run_dir, stage.iteration, stage.name).manifest()
        if manifest is None or added in manifest["inputs"]:
            return inputs
        legacy = {key: value for key, value in inputs.items() if key != added}
        if legacy != manifest["inputs"] or runs.digest_of(stage.config(self)) != manifest["config_digest"]:
            return inputs
        return legacy if read_unchanged(manifest) else inputs

    def external(self, path: str) -> Artifact:
        """A file or folder outside the run (initial policy, soup checkpoints, seed pairs). Its
        digest re-reads only files changed since the last start: a 7B checkpoint is not
        re-hashed at every resume."""
        cache = self.run_dir / "external_fingerprints.json"
        known = runs.read_scratch_json(cache, {})
        known = known if isinstance(known, dict) else {}
        key = str(Path(path).resolve())
        known[key] = runs.fingerprint(Path(path), known.get(key))
        runs.write_json_atomic(cache, known)
        return Artifact(Path(path), runs.content_digest(known[key]))

    def policy(self, source: str, iteration: int) -> Artifact:
        """source: "initial"; "entering" (what iteration starts from: a fork's copy of its
        parent's policy at its first iteration, else lineage.entering_stage's); "trained" (what
        iteration trained, lineage.trained_stage); "soup" (SALSA's reference)."""
        if source == "initial":
            return self.initial
        if source == "trained":
            return self.artifact(*lineage.trained_stage(iteration), POLICY_FOLDER)
        if source == "soup":
            return self.artifact(0, REFERENCE_SOUP, POLICY_FOLDER)
        if iteration == self.first_iteration and self.fork_start is not None:
            return Artifact(Path(self.fork_start[0]), self.fork_start[1])
        entering = lineage.entering_stage(iteration, bool(self.recipe.seed_training))
        return self.initial if entering is None else self.artifact(*entering, POLICY_FOLDER)
