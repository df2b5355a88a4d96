"""The declared pipeline: the stage lists per recipe, a new stage through the protocol alone,
reading the latest artifact of a name, and verify-on-read."""

import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stage_helpers import RecordingTracker

from selfplay import pipeline
from selfplay.artifacts import ArtifactDamaged
from selfplay.context import RunContext
from selfplay.pairs.stage import Pairs
from selfplay.pipeline import StageFailed, StageResult, run_stage
from selfplay.recipe import load_recipe

from conftest import REPO


def quickstart(*overrides):
    return load_recipe(REPO / "recipes" / "quickstart-cpu.yaml", list(overrides))


def test_stage_lists_follow_the_recipe():
    recipe = quickstart("iterations=4", "evaluate.every=2")
    assert pipeline.stage_names(recipe, 0) == ["baseline"]
    assert pipeline.stage_names(recipe, 1) == ["generate", "annotate", "pairs", "train"]
    assert pipeline.stage_names(recipe, 2) == ["generate", "annotate", "pairs", "train", "eval-gen", "evaluate"]
    assert pipeline.stage_names(quickstart("iterations=3", "evaluate.every=2"), 3)[-1] == "evaluate"  # the last one
    drift = load_recipe(REPO / "recipes" / "drift-cpu.yaml")
    assert pipeline.stage_names(drift, 0) == ["baseline", "seed-pairs", "seed"]
    assert pipeline.stage_names(drift, 1) == ["generate", "pairs", "train", "eval-gen", "evaluate"]
    assert [s.name for s in pipeline.stages(drift, 0, forked=True)] == ["baseline"]  # a fork inherits its policy


# -- a toy filter stage between annotate and pairs, through the protocol alone ------------------

@dataclass
class ToySamples:
    iteration: int
    name = "generate"
    produces = ("samples.parquet",)

    def inputs(self, ctx):
        return {}

    def config(self, ctx):
        return {"k": 2}

    def run(self, ctx, tmp):
        rows = [{"prompt_id": p, "prompt": f"q{p}", "prompt_token_ids": [1, p], "sample_idx": i, "text": f"a{p}{i}",
                 "token_ids": [5 + i], "logprobs": None, "finish_reason": "stop", "seed": 0}
                for p in range(3) for i in range(2)]
        pq.write_table(pa.Table.from_pylist(rows), tmp / "samples.parquet")
        return StageResult(["samples.parquet"], {})


@dataclass
class ToyJudge:
    iteration: int
    name = "annotate"
    produces = ("judgments.parquet",)

    def inputs(self, ctx):
        return {"samples": ctx.latest(self, "samples.parquet").digest}

    def config(self, ctx):
        return {}

    def run(self, ctx, tmp):
        rows = [{"prompt_id": p, "num_samples": 2, "scores": [0.0, 1.0], "pairwise_logits": None,  # sample 1 wins
                 "temperature": 1.0, "win_matrix": [0.5, 0.25, 0.75, 0.5]} for p in range(3)]
        pq.write_table(pa.Table.from_pylist(rows), tmp / "judgments.parquet")
        return StageResult(["judgments.parquet"], {})


@dataclass
class DropPrompts:
    """The toy new stage: drop some prompts' judgments (a filter, as a user would add)."""
    iteration: int
    dropped: tuple = (0,)
    name = "filter"
    produces = ("judgments.parquet",)

    def inputs(self, ctx):
        return {"judgments": ctx.latest(self, "judgments.parquet").digest}

    def config(self, ctx):
        return {"dropped": list(self.dropped)}

    def run(self, ctx, tmp):
        rows = [r for r in ctx.latest(self, "judgments.parquet").table().to_pylist() if r["prompt_id"] not in self.dropped]
        pq.write_table(pa.Table.from_pylist(rows), tmp / "judgments.parquet")
        return StageResult(["judgments.parquet"], {"kept": len(rows)})


@pytest.fixture
def toy_pipeline(monkeypatch, tmp_path):
    listed = {"stages": None}

    def stages(recipe, iteration, forked=False):
        return listed["stages"]

    monkeypatch.setattr(pipeline, "stages", stages)
    ctx = RunContext(run_dir=tmp_path, recipe=quickstart("pairs.type=best_worst", "train.loss=dpo"), tracker=RecordingTracker(),
                     info={"run_id": "toy"})

    def walk(dropped=(0,)):
        listed["stages"] = [ToySamples(1), ToyJudge(1), DropPrompts(1, dropped), Pairs(1)]
        return {stage.name: run_stage(ctx, stage) for stage in listed["stages"]}

    return ctx, walk


def test_a_new_stage_is_one_list_entry(toy_pipeline, tmp_path):
    ctx, walk = toy_pipeline
    manifests = walk()
    pairs = pq.read_table(tmp_path / "iter-001/pairs/pairs.parquet").to_pylist()
    # the pairs stage read the filter's judgments (prompt 0 dropped), not annotate's
    assert sorted({p["prompt_id"] for p in pairs}) == [1, 2]
    assert manifests["pairs"]["inputs"]["judgments"] == manifests["filter"]["outputs"]["judgments.parquet"]
    assert ctx.tracker.lines == [(1, "generate"), (1, "annotate"), (1, "filter"), (1, "pairs")]

    again = walk()  # resume: everything is done
    assert all(again[name]["started_at"] == manifests[name]["started_at"] for name in manifests)
    changed = walk(dropped=(2,))  # the filter's config changed: it and pairs are redone, nothing before
    assert changed["annotate"]["started_at"] == manifests["annotate"]["started_at"]
    assert changed["filter"]["started_at"] != manifests["filter"]["started_at"]
    assert changed["pairs"]["started_at"] != manifests["pairs"]["started_at"]
    assert sorted({p["prompt_id"] for p in pq.read_table(tmp_path / "iter-001/pairs/pairs.parquet").to_pylist()}) == [0, 1]


def test_a_damaged_input_fails_its_reader_and_resume_redoes_the_producer(toy_pipeline, tmp_path):
    ctx, walk = toy_pipeline
    first = walk()
    judgments = tmp_path / "iter-001/filter/judgments.parquet"
    table = pq.read_table(judgments).to_pylist()
    table[0]["win_matrix"] = [0.5, 0.0, 1.0, 0.5]  # same size, other bytes: as a bad disk or a hand edit would
    data = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(table), data)
    judgments.write_bytes(data.getvalue().to_pybytes())

    reader = Pairs(1)
    with pytest.raises(ArtifactDamaged, match="filter/judgments.parquet: its bytes no longer match"):
        ctx.latest(reader, "judgments.parquet").table()
    (tmp_path / "iter-001/pairs/manifest.json").unlink()  # make pairs run again: it reads the damaged file
    with pytest.raises(StageFailed, match="ArtifactDamaged"):
        run_stage(ctx, reader)

    again = walk()  # resume: the filter's outputs no longer hash to its record, so it is redone
    assert again["filter"]["started_at"] != first["filter"]["started_at"]
    assert again["pairs"]["outputs"] == first["pairs"]["outputs"]
    superseded = [json.loads(p.read_text()) for p in (tmp_path / "superseded").glob("*/reason.json")]
    assert any(r.get("stage") == "filter" and "no longer matched" in r["reason"] for r in superseded)


def test_artifact_digest_matches_the_manifest(toy_pipeline, tmp_path):
    ctx, walk = toy_pipeline
    manifests = walk()
    artifact = ctx.artifact(1, "pairs", "pairs.parquet")
    assert artifact.digest == manifests["pairs"]["outputs"]["pairs.parquet"]
    assert artifact.table().num_rows == len(pq.read_table(artifact.path))
    assert manifests["filter"]["metrics"]["kept"] == 2


def test_verify_rehashes_every_output(toy_pipeline, tmp_path):
    from selfplay.lineage import verify_run

    ctx, walk = toy_pipeline
    walk()
    assert [r["ok"] for r in verify_run(tmp_path)] == [True] * 4
    samples = tmp_path / "iter-001/generate/samples.parquet"
    stat = samples.stat()
    data = bytearray(samples.read_bytes())
    data[len(data) // 2] ^= 1                               # one bit flipped, size and mtime kept: fingerprints miss it
    samples.write_bytes(bytes(data))
    os.utime(samples, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    damaged = [r for r in verify_run(tmp_path) if not r["ok"]]
    assert [(r["stage"], r["problem"]) for r in damaged] == \
        [("generate", "samples.parquet no longer hash to the manifest's record")]


def test_resume_rehashes_a_rewrite_with_its_mtime_restored(toy_pipeline, tmp_path, caplog):
    """Issue 19 finding 3: the bit flip that verify catches is caught by resume too (the file's
    ctime changed), the console names the file, and the stage is redone."""
    ctx, walk = toy_pipeline
    first = walk()
    samples = tmp_path / "iter-001/generate/samples.parquet"
    stat = samples.stat()
    data = bytearray(samples.read_bytes())
    data[len(data) // 2] ^= 1
    samples.write_bytes(bytes(data))
    os.utime(samples, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with caplog.at_level("INFO", logger="selfplay"):
        again = walk()
    assert again["generate"]["started_at"] != first["generate"]["started_at"]
    assert f"iter 1 generate: {samples} changed since it was committed" in caplog.text
    assert again["annotate"]["started_at"] == first["annotate"]["started_at"]  # the redo made the same samples
