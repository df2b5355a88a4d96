"""The loop on the architectures users train: 2 iterations of a small chat recipe
(recipes/chat-cpu.yaml: conversations with system turns and earlier turns, some longer than the
context budget) on tiny Gemma-2, Qwen2, Mistral and Llama-3 policies (tiny_families.py), through
the real `selfplay run` (vLLM, DeepSpeed, Ray). Gemma-2 and Qwen2 read the JSONL, Mistral and
Llama-3 the same data as a datasets folder; Gemma-2's template has no system role (its system
prompt is merged into the first user turn), the others' has one. Then checks per architecture:

(a) the run's engine, after taking the trained policy in place (reload_weights), sampled what a
    fresh engine on that checkpoint samples: iter-002's eval-gen samples are regenerated, same
    seeds and settings, by a new engine built from the run's own recipe;
(b) the HF forward log-probs of the checkpoint, with the attention the trainer uses
    (causal_lm.load_causal_lm), equal vLLM's prompt log-probs on prompt + sampled response,
    multi-turn prompts included;
(c) the saved policy keeps its tie (no lm_head.weight in a tied model's safetensors), its
    config, generation config and tokenizer;
(d) the samples' prompt ids are `apply_chat_template` of the whole conversation (a history over
    the budget: of the conversation after its oldest exchanges), and the train stage's input ids
    begin with exactly those ids.

One run and one fresh engine per architecture (module-scoped, parametrized fixtures).
Measured on 2 CPU cores: a run takes 50-80 s (mistral 81, llama3 50, gemma2 77 alone; several
times that when other runs share the cores), the fresh-engine checks about 15 s.
"""

import json
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

from conftest import REPO

pytestmark = pytest.mark.slow

ARCHITECTURES = {"gemma2": True, "qwen2": True, "mistral": False, "llama3": False}   # family: tied embeddings
FROM_DATASETS_FOLDER = {"mistral", "llama3"}
OVERRIDES = ["iterations=2", "prompts.per_iteration=8", "prompts.eval_size=4", "train.epochs=1",
             "tracking.wandb=false", "generate.max_tokens=16", "train.max_prompt_length=176"]  # 192 - 16
CHATS = REPO / "recipes" / "data" / "chat_prompts.jsonl"
LOGPROB_TOLERANCE = 1e-4   # float32 on CPU: measured differences are about 2e-6
IGNORED_CONFIG_KEYS = {"transformers_version"}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def trained(request, tmp_path_factory):
    from selfplay.models import resolve_model

    family = request.param
    initial = resolve_model(f"tiny:{family}")
    folder = tmp_path_factory.mktemp(family)
    run_dir, prompts = folder / "run", CHATS
    if family in FROM_DATASETS_FOLDER:
        import datasets

        prompts = folder / "chats"
        datasets.Dataset.from_list([json.loads(line) for line in CHATS.read_text().splitlines()]).save_to_disk(
            str(prompts))
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "run", "recipes/chat-cpu.yaml",
                             f"policy.path=tiny:{family}", f"prompts.path={prompts}", *OVERRIDES,
                             "--run-dir", str(run_dir)],
                            capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"\n{family}: 2 iterations in {time.time() - started:.0f} s")
    return {"family": family, "tied": ARCHITECTURES[family], "initial": initial, "run_dir": run_dir,
            "policy": run_dir / "iter-002" / "train" / "policy"}


@pytest.fixture(scope="module")
def checks(trained):
    """A fresh engine on iter-002's policy: its samples for iter-002's eval-gen requests, and its
    prompt log-probs with the HF forward's on every eval-gen (prompt + response)."""
    import gc

    import torch
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from selfplay.artifacts import group_by_prompt
    from selfplay.generate.engine import VLLMEngine
    from selfplay.models.causal_lm import load_causal_lm
    from selfplay.recipe import load_recipe

    run_dir, policy = trained["run_dir"], trained["policy"]
    recipe = load_recipe(run_dir / "recipe.yaml")
    sampling = json.loads((run_dir / "iter-002" / "eval-gen" / "manifest.json").read_text())["config"]
    groups = group_by_prompt(pq.read_table(run_dir / "iter-002" / "eval-gen" / "samples.parquet"))
    engine = VLLMEngine(str(policy), recipe.generate, dtype=recipe.policy.dtype, seed=recipe.seed)
    fresh = engine.generate([rows[0]["prompt_token_ids"] for _, _, rows in groups],
                            [rows[0]["seed"] for _, _, rows in groups], n=sampling["n"],
                            temperature=sampling["temperature"], top_p=sampling["top_p"],
                            max_tokens=sampling["max_tokens"])
    sequences = [row["prompt_token_ids"] + row["token_ids"] for _, _, rows in groups for row in rows]
    outputs = engine.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in sequences],
                                  SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False)
    vllm_logps = [[step[token].logprob for step, token in zip(output.prompt_logprobs[1:], ids[1:])]
                  for output, ids in zip(outputs, sequences)]
    del engine, outputs
    gc.collect()
    model = load_causal_lm(policy, torch.float32).eval()
    with torch.no_grad():
        hf_logps = []
        for ids in sequences:
            logps = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
            hf_logps.append(logps.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist())
    return {"groups": groups, "fresh": fresh, "sequences": sequences, "vllm": vllm_logps, "hf": hf_logps}


def test_in_place_reload_equals_a_fresh_engine(trained, checks):
    from safetensors.torch import load_file

    reloaded = [[row["token_ids"] for row in rows] for _, _, rows in checks["groups"]]
    fresh = [[sample["token_ids"] for sample in samples] for samples in checks["fresh"]]
    assert sum(len(ids) for group in reloaded for ids in group) > 0
    assert reloaded == fresh
    # ... and the policy it reloaded was trained: equal samples do not come from unchanged weights
    before, after = (load_file(folder / "model.safetensors") for folder in (trained["initial"], trained["policy"]))
    assert any(not before[key].equal(after[key]) for key in after)


def test_hf_log_probs_match_vllm_prompt_log_probs(trained, checks):
    differences = [abs(hf - vllm) for hf_row, vllm_row in zip(checks["hf"], checks["vllm"])
                   for hf, vllm in zip(hf_row, vllm_row)]
    assert len(differences) == sum(len(ids) - 1 for ids in checks["sequences"])
    print(f"\n{trained['family']}: max |HF - vLLM| log-prob {max(differences):.2e} over {len(differences)} tokens")
    assert max(differences) < LOGPROB_TOLERANCE
    if trained["family"] == "gemma2":   # sequences run past the sliding window, so it is exercised
        from transformers import AutoConfig

        assert max(map(len, checks["sequences"])) > 2 * AutoConfig.from_pretrained(trained["policy"]).sliding_window


def test_saved_policy_keeps_tie_config_generation_config_and_tokenizer(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    initial = trained["initial"]
    for iteration in (1, 2):
        policy = trained["run_dir"] / f"iter-{iteration:03d}" / "train" / "policy"
        with safe_open(policy / "model.safetensors", "pt") as weights:
            keys = set(weights.keys())
        assert ("lm_head.weight" in keys) is not trained["tied"]
        config, config_before = (json.loads((folder / "config.json").read_text()) for folder in (policy, initial))
        assert {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS} == \
            {k: v for k, v in config_before.items() if k not in IGNORED_CONFIG_KEYS}
        generation, generation_before = (json.loads((folder / "generation_config.json").read_text())
                                         for folder in (policy, initial))
        assert generation == generation_before
        tokenizer, tokenizer_before = (AutoTokenizer.from_pretrained(folder) for folder in (policy, initial))
        assert tokenizer.get_vocab() == tokenizer_before.get_vocab()
        assert tokenizer.chat_template == tokenizer_before.chat_template
        assert (tokenizer.pad_token, tokenizer.eos_token) == (tokenizer_before.pad_token, tokenizer_before.eos_token)
    model = AutoModelForCausalLM.from_pretrained(trained["policy"])
    shares = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert shares is trained["tied"]


def expected_prompt_ids(tokenizer, family: str, messages: list[dict]) -> list[int]:
    """apply_chat_template of the whole conversation; Gemma-2's has no system role, so by the
    documented rule (docs/conversations.md) the system text opens the first user turn."""
    if family == "gemma2" and messages[0]["role"] == "system":
        system, first, *rest = messages
        messages = [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"}, *rest]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def test_prompt_ids_are_the_whole_conversation_and_the_trainer_reads_them_unchanged(trained):
    from transformers import AutoTokenizer

    from selfplay.recipe import load_recipe
    from selfplay.train.settings import TrainSettings
    from selfplay.train.trainer import _batch_tensors

    run_dir, family = trained["run_dir"], trained["family"]
    tokenizer = AutoTokenizer.from_pretrained(trained["initial"])
    recipe = load_recipe(run_dir / "recipe.yaml")
    shortened = 0
    for stage in ("iter-001/generate", "iter-002/generate", "iter-000/baseline"):
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        rows = {row["prompt_id"]: row for row in pq.read_table(run_dir / stage / "samples.parquet").to_pylist()}
        assert set(rows) == set(manifest["config"]["prompt_ids"])   # nothing skipped
        for prompt_id, row in rows.items():
            messages = row["messages"]
            assert messages[0]["role"] == "system" and messages[-1]["content"] == row["prompt"]
            if prompt_id in manifest["long_prompts"]["shortened"]:   # some oldest exchanges dropped
                shortened += 1
                system, turns = messages[:1], messages[1:]
                candidates = [expected_prompt_ids(tokenizer, family, system + turns[k:]) for k in range(2, len(turns), 2)]
                assert row["prompt_token_ids"] in candidates
            else:
                assert row["prompt_token_ids"] == expected_prompt_ids(tokenizer, family, messages)
            assert len(row["prompt_token_ids"]) <= recipe.generate.max_model_len - recipe.generate.max_tokens
    assert shortened >= 1   # the long histories of chat_prompts.jsonl were drawn and fitted, not cut mid-turn
    for iteration in (1, 2):
        folder = run_dir / f"iter-{iteration:03d}"
        sampled = {row["prompt_id"]: row["prompt_token_ids"]
                   for row in pq.read_table(folder / "generate" / "samples.parquet").to_pylist()}
        pairs = pq.read_table(folder / "pairs" / "pairs.parquet").to_pylist()
        assert [row["prompt_token_ids"] for row in pairs] == [sampled[row["prompt_id"]] for row in pairs]
        assert json.loads((folder / "train" / "manifest.json").read_text())["metrics"]["prompts_cut"] == 0
        input_ids, _, response_mask = _batch_tensors(pairs, ("chosen", "rejected"), 0, TrainSettings.of(recipe.train),
                                                     "cpu")
        for row, ids, mask in zip(pairs * 2, input_ids.tolist(), response_mask.tolist()):
            prompt = row["prompt_token_ids"]
            assert ids[:len(prompt)] == prompt and mask.index(1) == len(prompt)
