import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfplay.prompts import PromptError, load_prompts, split_prompts


@pytest.mark.parametrize("pool, iterations, per_iteration, eval_size", [(120, 3, 32, 16), (50, 4, 12, 2), (7, 2, 3, 1)])
def test_slices_are_disjoint_and_hold_out_eval(pool, iterations, per_iteration, eval_size):
    eval_ids, slices = split_prompts(pool, iterations, per_iteration, eval_size, seed=3)
    assert len(eval_ids) == eval_size and all(len(s) == per_iteration for s in slices)
    used = [i for s in slices for i in s]
    assert len(used) == len(set(used))                      # no prompt repeated across iterations
    assert not set(used) & set(eval_ids)                    # eval prompts never trained on
    assert set(used) | set(eval_ids) <= set(range(pool))
    assert split_prompts(pool, iterations, per_iteration, eval_size, seed=3) == (eval_ids, slices)  # deterministic


def test_every_prompt_is_used_when_the_pool_is_exact():
    eval_ids, slices = split_prompts(10, 3, 3, 1, seed=0)
    assert sorted(eval_ids + [i for s in slices for i in s]) == list(range(10))


def test_running_out_of_prompts_fails_unless_reuse():
    with pytest.raises(PromptError, match="only 9 remain"):
        split_prompts(10, 4, 3, 1)
    _, slices = split_prompts(10, 4, 3, 1, reuse=True)
    assert [len(s) for s in slices] == [3, 3, 3, 3]


def test_loaders_agree(tmp_path):
    texts = [f"prompt {i}" for i in range(5)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"q": t}) + "\n" for t in texts))
    pq.write_table(pa.table({"q": texts}), tmp_path / "p.parquet")
    import datasets

    datasets.Dataset.from_dict({"q": texts}).save_to_disk(str(tmp_path / "ds"))
    for source in ("p.jsonl", "p.parquet", "ds"):
        assert load_prompts(str(tmp_path / source), "q") == texts


def test_bad_prompt_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "ok"}\n{"text": "no field"}\n')
    with pytest.raises(PromptError, match="a.jsonl:2: .*missing or empty: prompt"):
        load_prompts(str(tmp_path / "a.jsonl"))
    (tmp_path / "b.jsonl").write_text('{"prompt": ""}\n')
    with pytest.raises(PromptError, match="b.jsonl:1: .*missing or empty: prompt"):
        load_prompts(str(tmp_path / "b.jsonl"))
    (tmp_path / "c.csv").write_text("prompt\nx\n")
    with pytest.raises(PromptError, match="must be .jsonl, .parquet"):
        load_prompts(str(tmp_path / "c.csv"))


def test_drift_records_and_seed_pairs_are_checked(tmp_path):
    from selfplay.pairs.drift import hindsight_prompt, load_dsat_records
    from selfplay.prompts import read_jsonl_records

    good = {"prompt": "Name a colour.", "dsat_response": "Blue.", "feedback": "Say more."}
    (tmp_path / "d.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "feedback": " "}) + "\n")
    with pytest.raises(PromptError, match="d.jsonl:2: a DRIFT record .*missing or empty: feedback"):
        load_dsat_records(str(tmp_path / "d.jsonl"))
    (tmp_path / "d.jsonl").write_text(json.dumps(good) + "\n")
    record = load_dsat_records(str(tmp_path / "d.jsonl"))[0]
    text = hindsight_prompt(record)
    assert text.startswith("Name a colour.") and "Blue." in text and "Say more." in text
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PromptError, match="no records"):
        read_jsonl_records(tmp_path / "empty.jsonl", ("prompt",), "a seed pair")
