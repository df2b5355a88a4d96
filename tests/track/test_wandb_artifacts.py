"""Policies, samples and pairs become W&B reference artifacts (paths, never uploads) once per
stage result, whatever a crash left behind, and a fork's first iteration uses its parent's
policy artifact. Read back from the offline run files with W&B's own reader
(`wandb leet inspect --json`)."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from selfplay.track.tracker import Tracker
from selfplay.track.wandb_artifacts import RECORD
from selfplay.track.wandb_offline import find_run_files, read_artifacts

WANDB = str(Path(sys.executable).parent / "wandb")
OUTPUT = {"train": "policy", "seed": "policy", "generate": "samples.parquet", "eval-gen": "samples.parquet",
          "baseline": "samples.parquet", "pairs": "pairs.parquet", "annotate": "judgments.parquet"}


def recipe(wandb=True, group=None):
    return SimpleNamespace(tracking=SimpleNamespace(wandb=wandb, mode="offline", project="selfplay-tests",
                                                    group=group, entity=None))


def info(name, parent=None):
    return {"run_id": f"{name}-id", "name": name, "wandb_run_id": f"{name}-w", "parent": parent}


def stage(run_dir, iteration, name, digest, inputs, run_id):
    """A committed stage: its output on disk (a policy is a folder) and its manifest."""
    path = run_dir / f"iter-{iteration:03d}" / name
    output = OUTPUT[name]
    if output == "policy":
        (path / output).mkdir(parents=True, exist_ok=True)
        (path / output / "model.safetensors").write_text(digest)
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / output).write_text(digest)
    return {"iteration": iteration, "stage": name, "inputs": inputs, "outputs": {output: digest},
            "output_files": {}, "metrics": {}, "run_id": run_id, "status": "done"}


def iteration_stages(run_dir, t, run_id, policy_in):
    """generate -> annotate -> pairs -> train -> eval-gen of iteration t; digests name the stage."""
    return [stage(run_dir, t, "generate", f"gen{t}", {"policy": policy_in}, run_id),
            stage(run_dir, t, "annotate", f"judg{t}", {"samples": f"gen{t}"}, run_id),
            stage(run_dir, t, "pairs", f"pairs{t}", {"samples": f"gen{t}", "judgments": f"judg{t}"}, run_id),
            stage(run_dir, t, "train", f"pol{t}", {"policy": policy_in, "reference": "initial",
                                                  "pairs": f"pairs{t}"}, run_id),
            stage(run_dir, t, "eval-gen", f"eval{t}", {"policy": f"pol{t}"}, run_id)]


def log_all(tracker, run_dir, manifests):
    for manifest in manifests:
        tracker.log_stage_artifacts(run_dir, manifest["iteration"], manifest["stage"], manifest)


def leet(run_file) -> list[dict]:
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_file)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def artifacts_in(run_dir) -> list[dict]:
    """Every artifact record of the run's offline files as W&B's reader prints it, tables' left out."""
    found = [r["artifact"] for f in find_run_files(run_dir) for r in leet(f) if r["type"] == "artifact"]
    return [a for a in found if "stage" in json.loads(a.get("metadata", "{}"))]


def run_parent(run_dir, iterations=(1, 2)):
    manifests = [stage(run_dir, 0, "baseline", "base", {"policy": "initial"}, "parent-id")]
    policy = "initial"
    for t in iterations:
        manifests += iteration_stages(run_dir, t, "parent-id", policy)
        policy = f"pol{t}"
    tracker = Tracker(run_dir, info("parent"), recipe(), {})
    log_all(tracker, run_dir, manifests)
    tracker.finish()
    return manifests


def test_each_policy_samples_and_pairs_is_one_reference_artifact_aliased_by_iteration(tmp_path):
    run_dir = tmp_path / "parent"
    run_parent(run_dir)
    found = artifacts_in(run_dir)
    got = {(a["name"], frozenset(a["aliases"])) for a in found}
    assert len(found) == len(got) == 1 + 2 * 4          # baseline + generate, pairs, train, eval-gen per iteration
    assert ("parent-eval-samples", frozenset({"iter-000", "latest"})) in got
    for t in (1, 2):
        alias = frozenset({f"iter-{t:03d}", "latest"})
        assert {("parent-samples", alias), ("parent-pairs", alias), ("parent-policy", alias),
                ("parent-eval-samples", alias)} <= got
    train = next(a for a in found if a["name"] == "parent-policy" and "iter-002" in a["aliases"])
    meta = json.loads(train["metadata"])
    assert meta["iteration"] == 2 and meta["stage"] == "train" and meta["digest"] == "pol2"
    # the run's own earlier outputs are named in the metadata, not used (one W&B run: no cycle)
    assert meta["inputs"] == {"policy": "parent-policy:iter-001", "pairs": "parent-pairs:iter-002"}
    assert train["type"] == "model"
    # references to the files in place, no uploads
    entries = train["manifest"]["contents"]
    assert [e["ref"] for e in entries] == [(run_dir / "iter-002/train/policy/model.safetensors").resolve().as_uri()]
    assert all("local_path" not in e for e in entries)
    assert not any(a.get("use_after_commit") for a in found)
    assert (run_dir / RECORD).exists()


def test_a_resume_logs_no_artifact_twice_and_follows_what_wandb_holds_not_the_record(tmp_path):
    run_dir = tmp_path / "parent"
    manifests = run_parent(run_dir, iterations=(1,))
    record = (run_dir / RECORD).read_text().splitlines()
    # a crash after W&B wrote the last artifact but before the record got its line, and a
    # record line for an artifact W&B never wrote (killed before its flush)
    lost_by_record = json.loads(record[-1])
    lost_by_wandb = stage(run_dir, 2, "generate", "gen2", {"policy": "pol1"}, "parent-id")
    lost_entry = {**lost_by_record, "stage": "generate", "iteration": 2, "digest": "gen2", "alias": "iter-002",
                  "artifact": "parent-samples"}
    (run_dir / RECORD).write_text("\n".join(record[:-1] + [json.dumps(lost_entry)]) + "\n")
    resumed = Tracker(run_dir, info("parent"), recipe(), {})
    log_all(resumed, run_dir, manifests + [lost_by_wandb])
    resumed.finish()
    first, second = find_run_files(run_dir)
    assert len(artifacts_in(run_dir)) == 5 + 1  # baseline, generate, pairs, train, eval-gen; then gen2 once
    names = [(a["name"], a["metadata"]["digest"]) for a in read_artifacts(second) if "stage" in a["metadata"]]
    assert names == [("parent-samples", "gen2")]
    keys = [(e["stage"], e["iteration"]) for e in map(json.loads, (run_dir / RECORD).read_text().splitlines())]
    assert sorted(keys) == sorted({(m["stage"], m["iteration"]) for m in manifests + [lost_by_wandb]
                                   if m["stage"] != "annotate"})


def test_a_forks_first_iteration_uses_its_parents_policy_artifact_once(tmp_path):
    parent_dir, fork_dir = tmp_path / "parent", tmp_path / "fork"
    run_parent(parent_dir)
    parent = {"run_dir": str(parent_dir.resolve()), "run_id": "parent-id", "iteration": 2}
    # iteration 1 is shared (the parent's manifests, hard-linked): nothing of it is the fork's to log
    shared = iteration_stages(fork_dir, 1, "parent-id", "initial")
    own = iteration_stages(fork_dir, 2, "fork-id", "pol1")
    for _ in range(2):  # a resume marks nothing used twice
        tracker = Tracker(fork_dir, info("fork", parent), recipe(group="parent"), {})
        log_all(tracker, fork_dir, shared + own)
        tracker.finish()
    found = artifacts_in(fork_dir)
    uses = [a for a in found if a.get("use_after_commit")]
    assert len(uses) == 1
    (use,) = uses
    assert use["name"] == "parent-policy" and json.loads(use["metadata"])["digest"] == "pol1"
    assert [e["ref"] for e in use["manifest"]["contents"]] == [
        (parent_dir / "iter-001/train/policy/model.safetensors").resolve().as_uri()]
    logged = {(a["name"], frozenset(a["aliases"])) for a in found if not a.get("use_after_commit")}
    assert logged == {(f"fork-{kind}", frozenset({"iter-002", "latest"})) for kind in ("samples", "pairs", "policy", "eval-samples")}
    fork_train = next(a for a in found if a["name"] == "fork-policy")
    assert json.loads(fork_train["metadata"])["inputs"] == {"policy": "parent-policy:iter-001",
                                                            "pairs": "fork-pairs:iter-002"}
    run = next(r["run"] for f in find_run_files(fork_dir) for r in leet(f) if r["type"] == "run")
    assert run["run_group"] == "parent"


def test_without_wandb_nothing_is_logged_or_written(tmp_path):
    tracker = Tracker(tmp_path, info("off"), recipe(wandb=False), {})
    manifest = stage(tmp_path, 1, "train", "pol1", {"policy": "initial"}, "off-id")
    tracker.log_stage_artifacts(tmp_path, 1, "train", manifest)
    tracker.log_examples(1, [{"prompt_id": 0, "prompt": "p", "response": "r"}])
    tracker.finish()
    assert not (tmp_path / RECORD).exists() and not (tmp_path / "wandb").exists()
    assert not (tmp_path / "wandb_examples.jsonl").exists()
