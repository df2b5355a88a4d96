"""vLLM engines as Ray actors: prompts sharded over replicas with none dropped, per-prompt seeds
that make samples independent of the replica count, and in-place policy reload."""

import pytest

pytestmark = pytest.mark.slow


def test_sharding_over_two_replicas_matches_one(local_ray, tiny_policy, tmp_path):
    from transformers import AutoTokenizer

    from selfplay.generate.pool import EnginePool
    from selfplay.generate.stage import generate_samples
    from selfplay.recipe import GenerateConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    prompts = [f"Tell me about item {i}." for i in range(7)]   # 7 prompts over 2 replicas: 4 + 3
    sampling = dict(n=3, temperature=1.0, top_p=1.0, max_tokens=8, run_seed=5, iteration=1, purpose="train",
                    max_model_len=1024)
    tables = {}
    for replicas in (1, 2):
        pool = EnginePool(str(tiny_policy), GenerateConfig(replicas=replicas, samples_per_prompt=3), "float32", seed=0)
        tables[replicas] = generate_samples(pool, tokenizer, list(range(7)), prompts, **sampling)[0].to_pylist()
        pool.shutdown()
    assert [r["prompt_id"] for r in tables[2]] == [i for i in range(7) for _ in range(3)]   # none dropped, in order
    assert [r["token_ids"] for r in tables[2]] == [r["token_ids"] for r in tables[1]]     # seeds, not placement
    assert len({tuple(r["token_ids"]) for r in tables[1]}) > 7                             # K samples differ


def test_in_place_reload_matches_a_fresh_engine(local_ray, tiny_policy, tmp_path):
    import ray
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.conversation import prompt_token_ids
    from selfplay.generate.engine import VLLMEngine
    from selfplay.recipe import GenerateConfig

    changed = tmp_path / "changed"
    model = AutoModelForCausalLM.from_pretrained(tiny_policy)
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)          # a sharper, different policy
    model.save_pretrained(changed)
    AutoTokenizer.from_pretrained(tiny_policy).save_pretrained(changed)
    ids = [prompt_token_ids(AutoTokenizer.from_pretrained(tiny_policy), "Hello there.")]
    engine_cls = ray.remote(num_cpus=1)(VLLMEngine)
    sampling = dict(n=2, temperature=1.0, top_p=1.0, max_tokens=8, logprobs=True)
    reused = engine_cls.remote(str(tiny_policy), GenerateConfig())
    before = ray.get(reused.generate.remote(ids, [3], **sampling))
    assert ray.get(reused.load_policy.remote(str(changed))) > 0
    after = ray.get(reused.generate.remote(ids, [3], **sampling))
    ray.kill(reused)
    fresh = engine_cls.remote(str(changed), GenerateConfig())
    expected = ray.get(fresh.generate.remote(ids, [3], **sampling))
    ray.kill(fresh)
    assert [s["token_ids"] for s in after[0]] == [s["token_ids"] for s in expected[0]]
    assert [s["token_ids"] for s in after[0]] != [s["token_ids"] for s in before[0]]
    for sample, reference in zip(after[0], expected[0]):
        assert sample["logprobs"] == pytest.approx(reference["logprobs"], abs=1e-5)
