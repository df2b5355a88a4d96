"""W&B reference artifacts of a run's policies, samples and pairs, with the use links of forks.

Each committed stage whose output is a policy, samples or pairs becomes one version of a W&B
artifact of `file://` references into the run directory (checksum=False: W&B records paths;
it never uploads, copies or hashes a checkpoint):

    stage                 output           artifact             type
    train, seed           policy           <run>-policy         model
    reference-soup        policy           <run>-reference      model
    generate              samples.parquet  <run>-samples        dataset
    eval-gen, baseline    samples.parquet  <run>-eval-samples   dataset
    pairs, seed-pairs     pairs.parquet    <run>-pairs          dataset

aliased `iter-NNN` (the seed, soup, baseline and seed pairs are iteration 0), with metadata
{iteration, stage, digest (the manifest's output digest), run_id, inputs}.

Lineage. A stage's inputs are output digests of earlier stages (manifest["inputs"]). They
are looked up in `wandb_artifacts.jsonl` of this run and of its fork ancestors (run.json's
parent chain), so no manifest is scanned and only artifacts actually logged are named:
- produced by an ancestor run: a use link. A fork's first iteration uses the parent's policy
  (and a later one, say, the parent's soup reference), so W&B draws parent run -> policy
  version -> fork run -> the fork's policies.
- produced by this run: named in the metadata's `inputs` ({"pairs": "<run>-pairs:iter-002"}),
  not used. All iterations of a selfplay run are one W&B run; a run using its own output
  would put a cycle in the lineage graph, which W&B draws as a DAG.
- anything else (the initial policy, seed pairs on disk): nothing.
W&B's public `run.use_artifact` refuses offline runs, so offline a use is logged the way
`use_artifact` logs a draft artifact online: the producer's references and metadata again,
flagged `use_after_commit`. On sync W&B finds the version by its digest (no new version),
marks it used by the fork and, as for any draft use, moves its `latest` alias to it.

Once per (stage, iteration, output digest), across crashes and resumes: `<run>/wandb_artifacts.jsonl`
(journal.py; one line per artifact logged or used) is the record. Online, a line is written
after W&B has committed the artifact (`wait()`); a crash between the two logs it again and W&B,
seeing the same digest, makes no new version (acceptable: the only cost is one repeated request).
Offline, what W&B holds is read from the run's offline files on start, as for history rows: an
artifact the record has but W&B never wrote (killed before its flush) is logged again, and
one W&B wrote but the record missed is not (the record line is added).
"""

import json
import logging
import re
from pathlib import Path
from typing import NamedTuple

from selfplay import runs
from selfplay.stage_names import (
    BASELINE,
    EVAL_GEN,
    GENERATE,
    PAIRS,
    PAIRS_PARQUET,
    POLICY_FOLDER,
    REFERENCE_SOUP,
    SAMPLES_PARQUET,
    SEED,
    SEED_PAIRS,
    TRAIN,
)
from selfplay.track.journal import append_journal, read_journal
from selfplay.track.wandb_offline import read_artifacts

log = logging.getLogger("selfplay")

RECORD = "wandb_artifacts.jsonl"


class Kind(NamedTuple):
    suffix: str   # the artifact is named <run>-<suffix>: W&B's name, kept across versions of selfplay
    output: str   # the stage output it references
    type: str     # W&B artifact type


POLICY_ARTIFACT = Kind("policy", POLICY_FOLDER, "model")
REFERENCE_ARTIFACT = Kind("reference", POLICY_FOLDER, "model")
SAMPLES_ARTIFACT = Kind("samples", SAMPLES_PARQUET, "dataset")
EVAL_SAMPLES_ARTIFACT = Kind("eval-samples", SAMPLES_PARQUET, "dataset")
PAIRS_ARTIFACT = Kind("pairs", PAIRS_PARQUET, "dataset")
STAGE_ARTIFACTS = {TRAIN: POLICY_ARTIFACT, SEED: POLICY_ARTIFACT, REFERENCE_SOUP: REFERENCE_ARTIFACT,
                   GENERATE: SAMPLES_ARTIFACT, EVAL_GEN: EVAL_SAMPLES_ARTIFACT, BASELINE: EVAL_SAMPLES_ARTIFACT,
                   PAIRS: PAIRS_ARTIFACT, SEED_PAIRS: PAIRS_ARTIFACT}


def artifact_name(run_name: str, suffix: str) -> str:
    """W&B allows letters, digits, '-', '_' and '.' in artifact names."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{run_name}-{suffix}")


def entry_key(entry: dict) -> tuple:
    """What makes an entry the same one again: a log is a stage result, a use an artifact version."""
    if entry["event"] == "use":
        return "use", entry["artifact"], entry["digest"]
    return "log", entry["stage"], entry["iteration"], entry["digest"]


def wandb_key(record: dict) -> tuple | None:
    """entry_key of an artifact record read back from an offline W&B file (None: not ours)."""
    meta = record["metadata"]
    if not {"stage", "iteration", "digest"} <= meta.keys():
        return None  # e.g. the artifact W&B makes for a logged Table
    if record["use_after_commit"]:
        return "use", record["name"], meta["digest"]
    return "log", meta["stage"], meta["iteration"], meta["digest"]


def ancestor_dirs(run_info: dict) -> list[Path]:
    """The run directories of a fork's parent, grandparent, ... (nearest first)."""
    dirs, parent = [], run_info.get("parent")
    while parent and Path(parent["run_dir"]) not in dirs:
        dirs.append(Path(parent["run_dir"]))
        try:
            parent = json.loads((dirs[-1] / "run.json").read_text()).get("parent")
        except (OSError, ValueError):
            break
    return dirs


class ArtifactLog:
    def __init__(self, wandb_run, run_dir: Path, run_info: dict, earlier_files: list[Path]):
        self.run = wandb_run
        self.run_dir = Path(run_dir)
        self.run_id, self.run_name = run_info["run_id"], run_info["name"]
        self.record = self.run_dir / RECORD
        self.entries = read_journal(self.record)
        self.offline = wandb_run.settings.mode == "offline"
        if self.offline:  # what W&B itself wrote, whatever the local record says
            self.done = {wandb_key(a) for path in earlier_files for a in read_artifacts(path)} - {None}
        else:
            self.done = {entry_key(e) for e in self.entries}
        self.ancestors = [e for path in ancestor_dirs(run_info) for e in reversed(read_journal(path / RECORD))]

    def log_stage(self, run_dir: Path, iteration: int, stage: str, manifest: dict) -> None:
        if manifest.get("run_id", self.run_id) != self.run_id:
            return  # a fork's shared iteration: the parent logged it
        inputs = {}
        for name, digest in sorted(manifest.get("inputs", {}).items()):
            producer = self._producer(digest)
            if producer is None:
                continue
            inputs[name] = f"{producer['artifact']}:{producer['alias']}"
            if producer["run_id"] != self.run_id:
                self._use(producer)
        kind = STAGE_ARTIFACTS.get(stage)
        if kind is None or kind.output not in manifest.get("outputs", {}):
            return
        digest = manifest["outputs"][kind.output]
        path = runs.StageDir(Path(run_dir).resolve(), iteration, stage).path / kind.output
        entry = {"event": "log", "artifact": artifact_name(self.run_name, kind.suffix), "alias": f"iter-{iteration:03d}",
                 "type": kind.type, "stage": stage, "iteration": iteration, "digest": digest, "path": str(path),
                 "run_id": self.run_id, "metadata": {"iteration": iteration, "stage": stage, "digest": digest,
                                                     "run_id": self.run_id, "inputs": inputs}}
        if entry_key(entry) not in self.done:
            artifact = self._artifact(entry)
            self.run.log_artifact(artifact, aliases=[entry["alias"]])
            self._committed(artifact, entry)
        self._remember(entry)

    def _producer(self, digest: str) -> dict | None:
        """The latest artifact of this run with this digest, else the nearest ancestor's."""
        for entry in [*reversed(self.entries), *self.ancestors]:
            if entry["event"] == "log" and entry["digest"] == digest:
                return entry
        return None

    def _use(self, producer: dict) -> None:
        entry = {**producer, "event": "use"}
        if entry_key(entry) not in self.done:
            try:
                artifact = self._artifact(producer)
            except ValueError as error:  # the parent's files were moved (a redo) or deleted
                log.warning("W&B: not marking %s:%s as used: %s", producer["artifact"], producer["alias"], error)
                return
            if self.offline:  # what run.use_artifact does with a draft artifact online
                self.run._log_artifact(artifact, aliases=[], is_user_created=True, use_after_commit=True)
            else:
                self.run.use_artifact(artifact)
            self._committed(artifact, entry)
        self._remember(entry)

    def _artifact(self, entry: dict):
        import wandb

        artifact = wandb.Artifact(entry["artifact"], type=entry["type"], metadata=entry["metadata"])
        artifact.add_reference(Path(entry["path"]).as_uri(), checksum=False)
        return artifact

    def _committed(self, artifact, entry: dict) -> None:
        if not self.offline:
            artifact.wait()  # on the server before the record says so
        self.done.add(entry_key(entry))

    def _remember(self, entry: dict) -> None:
        if all(entry_key(e) != entry_key(entry) for e in self.entries):
            append_journal(self.record, entry)
            self.entries.append(entry)
