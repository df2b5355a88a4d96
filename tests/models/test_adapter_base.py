"""adapter.base_problem: an adapter folder's base is checked by content, not by path: an edited
file or a moved base is named, an intact one passes, and a full policy has no base to check."""

import json

from selfplay import runs
from selfplay.models.adapter import BASE_JSON, base_problem


def adapter_on(tmp_path, base):
    folder = tmp_path / "adapter"
    folder.mkdir()
    digest = runs.content_digest(runs.fingerprint(base))
    (folder / BASE_JSON).write_text(json.dumps({"path": str(base), "digest": digest}))
    return folder


def test_an_intact_base_passes_and_an_edited_or_moved_one_is_named(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(b"weights" * 100)
    folder = adapter_on(tmp_path, base)
    assert base_problem(folder) is None
    (base / "model.safetensors").write_bytes(b"weightz" * 100)  # same size, other bytes
    assert "no longer hashes to the digest" in base_problem(folder)
    (base / "model.safetensors").write_bytes(b"weights" * 100)
    assert base_problem(folder) is None
    base.rename(tmp_path / "elsewhere")
    assert "is not there" in base_problem(folder)


def test_a_full_policy_has_no_base_and_a_known_answer_is_reused(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    assert base_problem(full) is None
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    folder, known = adapter_on(tmp_path, base), {}
    assert base_problem(folder, known) is None and list(known.values()) == [None]
    (base / "config.json").write_text('{"edited": 1}')
    assert base_problem(folder, known) is None  # the caller's cache: one check per base per verify
    assert base_problem(folder) is not None
