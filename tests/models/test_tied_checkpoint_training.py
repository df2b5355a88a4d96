"""The train stage saves a tied policy (tiny Gemma-2: tied embeddings, soft-capped attention)
with its tie, on ZeRO-0 in 1 rank and on ZeRO-3's consolidated gather in 2 ranks: the embedding
is written once, as `model.embed_tokens.weight`, and a reload ties the head to it again. (vLLM's
strict Gemma-2 loader refuses a checkpoint that also has `lm_head.weight`; the architecture runs
in tests/e2e/test_architectures.py load such checkpoints into vLLM.)"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from selfplay.recipe import TrainConfig

pytestmark = pytest.mark.slow

CONFIG = dict(loss="sppo", beta=0.1, learning_rate=1e-3, optimizer="rmsprop", epochs=1, global_batch_size=4,
              micro_batch_size=2, max_length=48, max_prompt_length=24, seed=3)


@pytest.fixture(scope="module")
def policy():
    from selfplay.models import resolve_model

    return resolve_model("tiny:gemma2")


@pytest.fixture(scope="module")
def runs(policy, tmp_path_factory):
    import ray

    from selfplay.cluster import start_ray
    from selfplay.train.ranks import train_policy

    workdir = tmp_path_factory.mktemp("tied")
    rng = np.random.default_rng(0)

    def ids():
        return rng.integers(10, 2000, size=int(rng.integers(5, 20))).tolist()

    rows = [{"prompt_id": f"p{i}", "prompt_token_ids": ids(), "chosen_token_ids": ids(), "rejected_token_ids": ids(),
             "chosen_win_rate": 0.8, "rejected_win_rate": 0.2} for i in range(8)]
    pq.write_table(pa.Table.from_pylist(rows), workdir / "pairs.parquet")
    start_ray(None, 2)
    try:
        out = {}
        for name, overrides in (("zero0", {}), ("zero3", {"zero_stage": 3, "world_size": 2})):
            config = TrainConfig(**{**CONFIG, **overrides})
            train_policy(str(policy), str(policy), str(workdir / "pairs.parquet"), str(workdir / name), config)
            out[name] = workdir / name
        return out
    finally:
        ray.shutdown()


@pytest.mark.parametrize("name", ["zero0", "zero3"])
def test_trained_tied_policy_is_saved_with_its_tie(runs, policy, name):
    from transformers import AutoModelForCausalLM

    saved, initial = load_file(runs[name] / "model.safetensors"), load_file(policy / "model.safetensors")
    assert set(saved) == set(initial) and "lm_head.weight" not in saved
    assert not saved["model.embed_tokens.weight"].equal(initial["model.embed_tokens.weight"])  # it trained
    model = AutoModelForCausalLM.from_pretrained(runs[name])
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert torch.equal(model.lm_head.weight, saved["model.embed_tokens.weight"])
    assert (runs[name] / "generation_config.json").is_file() and (runs[name] / "tokenizer.json").is_file()
