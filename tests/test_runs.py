import json

import pytest

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
