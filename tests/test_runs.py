import json
import logging
import os
import stat
from pathlib import Path

import pytest

from selfplay import runs
from selfplay.runs import RunLock, RunLockedError, StageDir, digest_of


def _write_stage(run_dir, inputs, config, text="hello"):
    stage = StageDir(run_dir, 1, "generate")
    tmp = stage.begin()
    (tmp / "samples.txt").write_text(text)
    stage.commit(["samples.txt"], {"inputs": inputs, "config_digest": digest_of(config)})
    return stage


def test_committed_stage_is_done_only_for_same_inputs_and_config(tmp_path):
    stage = _write_stage(tmp_path, {"policy": "abc"}, {"k": 4})
    assert stage.is_done({"policy": "abc"}, digest_of({"k": 4}))
    assert not stage.is_done({"policy": "abd"}, digest_of({"k": 4}))
    assert not stage.is_done({"policy": "abc"}, digest_of({"k": 5}))
    assert not stage.tmp.exists()
    assert json.loads(stage.manifest_path.read_text())["status"] == "done"


def test_corrupted_output_is_not_done(tmp_path):
    stage = _write_stage(tmp_path, {}, {})
    (stage.path / "samples.txt").write_text("hellO")
    assert not stage.is_done({}, digest_of({}))


def test_a_same_size_rewrite_with_its_mtime_restored_is_rehashed(tmp_path, caplog):
    """Issue 19 finding 3: size and mtime match the record, ctime does not (the kernel sets it)."""
    stage = _write_stage(tmp_path, {}, {})
    output = stage.path / "samples.txt"
    before = output.stat()
    output.write_text("hellO")
    os.utime(output, ns=(before.st_atime_ns, before.st_mtime_ns))
    with caplog.at_level(logging.INFO, logger="selfplay"):
        assert not stage.is_done({}, digest_of({}))
    assert f"iter 1 generate: {output} changed since it was committed" in caplog.text


def test_why_a_stage_is_redone_is_said(tmp_path, caplog):
    stage = _write_stage(tmp_path, {"policy": "abc", "samples": "s"}, {"k": 4})
    with caplog.at_level(logging.INFO, logger="selfplay"):
        assert not stage.is_done({"policy": "abd", "samples": "s"}, digest_of({"k": 4}))
        assert not stage.is_done({"policy": "abc", "samples": "s"}, digest_of({"k": 5}))
    assert "iter 1 generate: its input policy changed since it was committed; it is redone" in caplog.text
    assert "iter 1 generate: its settings changed" in caplog.text


def test_an_old_fingerprint_record_is_rehashed_once(tmp_path, monkeypatch):
    """A manifest from before ctime and inode were recorded ([size, mtime, sha256]) is re-hashed,
    then its record gains them, so the next check is a stat again."""
    stage = _write_stage(tmp_path, {}, {})
    manifest = json.loads(stage.manifest_path.read_text())
    manifest["output_files"] = {name: {file: entry[:3] for file, entry in files.items()}
                                for name, files in manifest["output_files"].items()}
    stage.manifest_path.write_text(json.dumps(manifest))
    hashed = []
    real = runs.sha256_file
    monkeypatch.setattr(runs, "sha256_file", lambda path: hashed.append(path) or real(path))
    assert stage.is_done({}, digest_of({})) and len(hashed) == 1
    [[entry]] = [files.values() for files in stage.manifest()["output_files"].values()]
    stat = (stage.path / "samples.txt").stat()
    assert entry[3:] == [stat.st_ctime_ns, stat.st_ino]
    assert stage.is_done({}, digest_of({})) and len(hashed) == 1


def test_half_written_stage_does_not_count(tmp_path):
    stage = StageDir(tmp_path, 1, "train")
    (stage.begin() / "partial.bin").write_bytes(b"x")   # crashed before commit
    assert not stage.is_done({}, digest_of({}))
    assert not stage.path.exists()
    assert list(stage.begin().iterdir()) == []           # a rerun starts from a clean temporary folder


def test_second_driver_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match="in use by another selfplay driver"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released after the first driver ends
        pass


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_outputs_get_the_modes_the_umask_allows(tmp_path, umask_022):
    """Issue 19 finding 14: a checkpoint saved by safetensors (0600) in a mkdtemp folder (0700)
    is committed readable by others under umask 022, as are the stage folder and its manifest."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    stage = StageDir(tmp_path, 1, "train")
    tmp = stage.begin()
    policy = Path(tempfile.mkdtemp(dir=tmp))
    save_file({"w": torch.zeros(2)}, policy / "model.safetensors")
    (tmp / "history.jsonl").write_text("{}\n")
    policy.rename(tmp / "policy")
    stage.commit(["policy", "history.jsonl"], {"inputs": {}, "config_digest": digest_of({})})
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in [stage.path, *stage.path.rglob("*")]}
    assert modes == {"iter-001/train": 0o755, "iter-001/train/policy": 0o755,
                     "iter-001/train/policy/model.safetensors": 0o644, "iter-001/train/history.jsonl": 0o644,
                     "iter-001/train/manifest.json": 0o644}
    assert stage.is_done({}, digest_of({}))  # the fingerprints were taken after the chmod


def test_the_umask_is_read_without_changing_it(umask_022):
    assert runs.umask() == 0o022 and os.umask(0o022) == 0o022
