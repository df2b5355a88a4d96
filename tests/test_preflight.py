"""Pre-flight checks of the folders a recipe points at (configs only, no weights loaded), and
`Driver.run` running them before the run directory exists."""

import json
import shutil
import subprocess
import sys

import pytest

from selfplay.preflight import PreflightError, check_recipe, vllm_architectures
from selfplay.recipe import load_recipe

from conftest import REPO

QUICKSTART = REPO / "recipes" / "quickstart-cpu.yaml"


def policy_copy(tiny_policy, tmp_path, name="policy", **config_changes):
    folder = tmp_path / name
    shutil.copytree(tiny_policy, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def check(*overrides):
    return check_recipe(load_recipe(QUICKSTART, list(overrides)))


def test_a_real_policy_folder_passes_without_importing_vllm(tiny_policy):
    pool = check(f"policy.path={tiny_policy}")
    assert len(pool.prompts) == 120
    # in a fresh interpreter: the registry is read from vLLM's source (`import vllm` costs 15-25 s)
    code = (f"from selfplay.preflight import check_recipe; from selfplay.recipe import load_recipe; import sys; "
            f"check_recipe(load_recipe({str(QUICKSTART)!r}, ['policy.path={tiny_policy}'])); "
            f"print('vllm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


@pytest.mark.parametrize("change, message", [
    ({"model_type": "no-such-type"}, "model_type 'no-such-type', which transformers"),
    ({"architectures": ["BertModel"], "model_type": "bert"}, "none of them a causal language model"),
])
def test_architectures_transformers_does_not_know_are_refused(tiny_policy, tmp_path, change, message):
    folder = policy_copy(tiny_policy, tmp_path, **change)
    with pytest.raises(PreflightError, match=message):
        check(f"policy.path={folder}")


def test_an_architecture_vllm_cannot_serve_is_refused(tiny_policy, tmp_path):
    known = vllm_architectures()
    if known is None:
        pytest.skip("vLLM is not installed here")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type, name = next((t, n) for t, n in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()
                            if isinstance(n, str) and n not in known)
    folder = policy_copy(tiny_policy, tmp_path, model_type=model_type, architectures=[name])
    with pytest.raises(PreflightError, match=f"architecture '{name}', which the installed vLLM cannot serve"):
        check(f"policy.path={folder}")


def test_missing_files_chat_template_and_context(tiny_policy, tmp_path):
    folder = policy_copy(tiny_policy, tmp_path, "no-template")
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(PreflightError, match="policy.path: the tokenizer in .* has no chat template"):
        check(f"policy.path={folder}")
    folder = policy_copy(tiny_policy, tmp_path, "no-weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(PreflightError, match="missing its weights file"):
        check(f"policy.path={folder}")
    folder = policy_copy(tiny_policy, tmp_path, "short", max_position_embeddings=512)
    with pytest.raises(PreflightError, match=r"generate.max_model_len \(1024\) is larger than the policy's context"):
        check(f"policy.path={folder}")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(PreflightError, match="config.json is not readable JSON"):
        check(f"policy.path={folder}")


def test_judge_folders(tiny_policy, tmp_path):
    from selfplay.models import resolve_model

    reward = resolve_model("tiny:reward")
    check("annotate.type=reward_model", "annotate.function=null", f"annotate.path={reward}")
    with pytest.raises(PreflightError, match="a reward model is a sequence classifier"):
        check("annotate.type=reward_model", "annotate.function=null", f"annotate.path={tiny_policy}")
    with pytest.raises(PreflightError, match="annotate.path: .*field 'ranker_type' is missing"):
        check("annotate.type=pairrm", "annotate.function=null", f"annotate.path={tiny_policy}")
    with pytest.raises(PreflightError, match="evaluate.judge.path: tiny model 'tiny:llama' does not fit here; "
                                             "allowed: tiny:reward"):
        check("evaluate.judge.type=reward_model", "evaluate.judge.path=tiny:llama")
    with pytest.raises(PreflightError, match="annotate.reference: .*does not exist"):
        check("annotate.type=selfie", "annotate.function=null", f"annotate.reference={tmp_path / 'gone'}")


def test_a_hub_id_in_the_local_cache_is_pointed_at(tmp_path, monkeypatch, tiny_policy):
    """A hub id with a cached snapshot: the one line gives the folder to set."""
    hub = tmp_path / "hf" / "hub" / "models--acme--tiny"
    snapshot = hub / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_policy, snapshot)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(PreflightError, match=f"in the local Hugging Face cache: set policy.path={snapshot}"):
        check("policy.path=acme/tiny")


def test_driver_checks_before_the_run_directory_exists(tmp_path):
    """Issue 13 finding 7: a bad policy path no longer freezes a run.json (nor starts Ray)."""
    import ray

    from selfplay.driver import Driver

    run_dir = tmp_path / "runs" / "x"
    recipe = load_recipe(QUICKSTART, [f"policy.path={tmp_path / 'missing'}"])
    with pytest.raises(PreflightError, match="policy.path"):
        Driver(recipe, run_dir).run()
    assert not run_dir.exists() and not ray.is_initialized()


def test_a_lora_adapter_on_a_tied_lm_head_is_refused_before_the_run(tiny_policy, tmp_path):
    """The merged checkpoint of an adapter on a tied lm_head is not the policy trained (its
    embedding moves too; tests/train/test_lora_parity.py): refused in pre-flight, for a folder
    and for a tiny policy (checked by the driver once built), before a run directory or Ray."""
    import ray

    from selfplay.driver import Driver

    lora = ["train.lora.target_modules=[q_proj, lm_head]"]
    tied = policy_copy(tiny_policy, tmp_path, tie_word_embeddings=True)
    with pytest.raises(PreflightError, match="train.lora.target_modules: lm_head is tied"):
        check(f"policy.path={tied}", *lora)
    check(f"policy.path={tiny_policy}", *lora)  # the tiny Llama's lm_head is its own weight
    check(f"policy.path={tied}", "train.lora.target_modules=[q_proj]")
    run_dir = tmp_path / "runs" / "x"
    with pytest.raises(PreflightError, match="lm_head is tied"):
        Driver(load_recipe(QUICKSTART, ["policy.path=tiny:qwen2", *lora]), run_dir).run()
    assert not run_dir.exists() and not ray.is_initialized()
