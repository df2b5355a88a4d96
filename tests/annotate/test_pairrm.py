"""PairRM judge on a tiny random checkpoint in llm-blender's real layout.

The key check: the native backend gives the same pairwise logits as llm-blender itself on the
same folder, truncation included. The tiny ranker has source_maxlength 96 and
candidate_maxlength 48, so the long prompt is cut, and LONG_RESPONSE is cut both after the long
prompt (budget 48) and after a short one (budget 48 + half the unused source budget).
"""

import shutil

import numpy as np
import pytest

from selfplay.judging.pairrm import PairRMJudge
from selfplay.judging.win_matrix import aggregated_scores
from selfplay.models import resolve_model


def expit(x):
    return 1.0 / (1.0 + np.exp(-x))

LONG_PROMPT = "Explain how a hash table handles collisions, with an example in Python. " * 8
LONG_RESPONSE = "A hash table maps keys to buckets; colliding keys share a bucket and are chained. " * 6
PROMPTS = ["What is the capital of France?", LONG_PROMPT, "Name a prime number."]
RESPONSES = [
    ["Paris.", "It is Paris, on the Seine.", LONG_RESPONSE, "The capital [SEP] is Paris."],
    [LONG_RESPONSE, "Open addressing probes the next slot.", "I do not know."],
    ["7", "Four"],
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Built through resolve_model, so the relative backbone path must survive the rename into the cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SELFPLAY_CACHE", str(cache))
        return resolve_model("tiny:pairrm", seed=0)


@pytest.fixture(scope="module")
def native(checkpoint):
    return PairRMJudge(str(checkpoint), batch_tokens=4096)


@pytest.fixture(scope="module")
def blender(checkpoint):
    return PairRMJudge(str(checkpoint), backend="llm-blender")


@pytest.fixture(scope="module")
def native_logits(native):
    return [j.pairwise_logits for j in native.judge(PROMPTS, RESPONSES)]


def test_checkpoint_has_llm_blender_layout(checkpoint):
    from safetensors import safe_open

    assert (checkpoint / "config.json").is_file() and (checkpoint / "backbone" / "config.json").is_file()
    with safe_open(checkpoint / "model.safetensors", "pt") as weights:
        prefixes = {key.split(".")[0] for key in weights.keys()}
    assert prefixes == {"pretrained_model", "head_layer"}


def test_native_equals_llm_blender(native_logits, blender):
    blender_logits = [j.pairwise_logits for j in blender.judge(PROMPTS, RESPONSES)]
    for ours, theirs, group in zip(native_logits, blender_logits, RESPONSES):
        assert ours.shape == (len(group), len(group))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    everything = np.concatenate([m.ravel() for m in native_logits])
    assert np.abs(everything).max() > 0.1  # large enough that a wrong input format would show
    first = native_logits[0]
    assert np.all(np.diag(first) == 0)
    assert not np.allclose(first, -first.T, atol=1e-3)  # both orders really scored: PairRM is not antisymmetric


def test_llm_blender_rank_scores_are_the_aggregated_scores(native_logits, blender):
    """rank(return_scores=True, batch_size=1), SPPO's call, gives mean_j (L[i,j] - L[j,i]) of our L."""
    for prompt, group, logits in zip(PROMPTS, RESPONSES, native_logits):
        scores = blender.blender.rank([prompt], [group], return_scores=True, batch_size=1, disable_tqdm=True)
        np.testing.assert_allclose(scores[0], aggregated_scores(logits), rtol=0, atol=1e-5)


def test_token_budget_batches_equal_single_rows(checkpoint, native_logits):
    one_row_each = PairRMJudge(str(checkpoint), batch_tokens=1)
    for single, batched in zip(one_row_each.judge(PROMPTS, RESPONSES), native_logits):
        np.testing.assert_allclose(single.pairwise_logits, batched, rtol=0, atol=1e-5)


def test_win_matrices_from_the_same_logits(native):
    judgment = native.judge(PROMPTS[:1], RESPONSES[:1])[0]
    logits = judgment.pairwise_logits
    direct = judgment.win_matrix("direct")
    off_diagonal = ~np.eye(len(logits), dtype=bool)
    np.testing.assert_allclose(direct[off_diagonal], expit(logits[off_diagonal]))
    np.testing.assert_allclose(np.diag(direct), 0.5)
    aggregated = judgment.win_matrix("aggregated")
    scores = [np.mean([logits[i, j] - logits[j, i] for j in range(len(logits))]) for i in range(len(logits))]
    for i in range(len(logits)):
        for j in range(len(logits)):
            assert aggregated[i, j] == pytest.approx(expit(scores[i] - scores[j]))


def test_input_layout_is_llm_blenders(native):
    """The (0, 1) input of the first prompt: source, then candidate 0 as 1, candidate 1 as 2."""
    sources, candidates = native._encode(PROMPTS[:1], [RESPONSES[0][:2]])
    ids, markers = native._pair_input(sources[0], candidates[0][0], candidates[0][1])
    tokens = native.tokenizer.convert_ids_to_tokens(ids)
    assert [t for t in tokens if t.startswith("<|") or t in ("[CLS]", "[SEP]")] == [
        "[CLS]", "<|source|>", "[SEP]", "[CLS]", "<|candidate1|>", "[SEP]", "[CLS]", "<|candidate2|>", "[SEP]"]
    assert [tokens[m] for m in markers] == ["<|source|>", "<|candidate1|>", "<|candidate2|>"]
    assert native.tokenizer.decode(ids[markers[1] + 1:markers[2] - 2]).strip() == "Paris."


def test_response_past_the_candidate_budget_is_truncated(native):
    """Text appended after the cut changes nothing; the cut keeps the response's beginning."""
    longer = [[LONG_RESPONSE, "Short answer."], [LONG_RESPONSE + " And a lot more text.", "Short answer."]]
    first, second = native.judge([PROMPTS[0]] * 2, longer)
    np.testing.assert_allclose(first.pairwise_logits, second.pairwise_logits, rtol=0, atol=1e-6)
    sources, candidates = native._encode([PROMPTS[0]], [longer[0]])
    budget = 48 + (96 - len(sources[0])) // 2
    assert len(candidates[0][0]) == budget and candidates[0][0][-1] == native.tokenizer.sep_token_id


def test_pytorch_model_bin_from_transformers_4_loads(checkpoint, tmp_path, native_logits):
    """The other weights file llm-blender reads, with the position_ids buffer old transformers saved."""
    import torch
    from safetensors.torch import load_file

    copy = tmp_path / "pairrm"
    shutil.copytree(checkpoint, copy)
    state = load_file(copy / "model.safetensors")
    state["pretrained_model.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save(state, copy / "pytorch_model.bin")
    (copy / "model.safetensors").unlink()
    judgment = PairRMJudge(str(copy)).judge(PROMPTS[:1], RESPONSES[:1])[0]
    np.testing.assert_allclose(judgment.pairwise_logits, native_logits[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("remove, message", [("config.json", "config.json"), ("model.safetensors", "weights file"),
                                             ("backbone", "model_name")])
def test_incomplete_checkpoint_is_rejected(checkpoint, tmp_path, remove, message):
    broken = tmp_path / "pairrm"
    shutil.copytree(checkpoint, broken)
    target = broken / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ValueError, match=message):
        PairRMJudge(str(broken))
    if remove == "model.safetensors":  # llm-blender itself would only log this and judge with random weights
        with pytest.raises(ValueError, match=message):
            PairRMJudge(str(broken), backend="llm-blender")


@pytest.mark.parametrize("responses, message", [([["only one"]], "K >= 2"),
                                                ([["fine", ""]], r"responses\[0\]\[1\] is an empty string")])
def test_bad_responses_are_rejected(native, responses, message):
    with pytest.raises(ValueError, match=message):
        native.judge(["a prompt"], responses)


def test_unknown_backend_is_rejected(checkpoint):
    with pytest.raises(ValueError, match="annotate.backend"):
        PairRMJudge(str(checkpoint), backend="vllm")
