import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfplay.conversation import normalized
from selfplay.prompts import PromptError, distinct_ids, load_prompt_pool, load_prompts, split_prompts

from conftest import REPO


@pytest.mark.parametrize("pool, iterations, per_iteration, eval_size", [(120, 3, 32, 16), (50, 4, 12, 2), (7, 2, 3, 1)])
def test_slices_are_disjoint_and_hold_out_eval(pool, iterations, per_iteration, eval_size):
    eval_ids, slices = split_prompts(pool, iterations, per_iteration, eval_size, seed=3)
    assert len(eval_ids) == eval_size and all(len(s) == per_iteration for s in slices)
    used = [i for s in slices for i in s]
    assert len(used) == len(set(used))                      # no prompt repeated across iterations
    assert not set(used) & set(eval_ids)                    # eval prompts never trained on
    assert set(used) | set(eval_ids) <= set(range(pool))
    again = split_prompts(pool, iterations, per_iteration, eval_size, seed=3)
    assert (again[0], list(again[1])) == (eval_ids, list(slices))  # deterministic


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


def test_damaged_prompt_files_name_the_file_and_place(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "ok"}\n{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(PromptError, match=r"latin1.jsonl:3: not UTF-8 \(byte 0xe9 at column 16\)"):
        load_prompts(str(tmp_path / "latin1.jsonl"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("not a dataset")
    with pytest.raises(PromptError, match="folder: not a readable datasets folder"):
        load_prompts(str(tmp_path / "folder"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + bytes(range(64)))
    with pytest.raises(PromptError, match="bad.parquet: not a readable Parquet file"):
        load_prompts(str(tmp_path / "bad.parquet"))
    pq.write_table(pa.table({"prompt": ["fine", None, "x"]}), tmp_path / "gap.parquet")
    with pytest.raises(PromptError, match="gap.parquet: row 1 of column 'prompt': .* got NoneType"):
        load_prompts(str(tmp_path / "gap.parquet"))
    pq.write_table(pa.table({"prompt": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(PromptError, match="row 0 of column 'prompt': a prompt must be a non-empty string, got int"):
        load_prompts(str(tmp_path / "ints.parquet"))
    with pytest.raises(PromptError, match="column 'q' not in"):
        load_prompts(str(tmp_path / "ints.parquet"), "q")


def test_jsonl_keeps_unicode_line_separators_inside_strings_and_a_bom(tmp_path):
    texts = ["first\u2028line", "second\u0085x", "third"]
    (tmp_path / "p.jsonl").write_bytes(("\ufeff" + "".join(json.dumps({"prompt": t}, ensure_ascii=False) + "\r\n"
                                                         for t in texts)).encode("utf-8"))
    assert load_prompts(str(tmp_path / "p.jsonl")) == texts


def test_drift_records_and_seed_pairs_are_checked(tmp_path):
    from selfplay.methods.drift import hindsight_prompt, load_dsat_records
    from selfplay.prompts import read_jsonl_records
    from selfplay.recipe import HINDSIGHT_TEMPLATE

    good = {"prompt": "Name a colour.", "dsat_response": "Blue.", "feedback": "Say more."}
    (tmp_path / "d.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "feedback": " "}) + "\n")
    with pytest.raises(PromptError, match="d.jsonl:2: a DRIFT record .*missing or empty: feedback"):
        load_dsat_records(str(tmp_path / "d.jsonl"))
    (tmp_path / "d.jsonl").write_text(json.dumps(good) + "\n")
    record = load_dsat_records(str(tmp_path / "d.jsonl"))[0]
    text = hindsight_prompt(record, HINDSIGHT_TEMPLATE)
    assert text.startswith("Name a colour.") and "Blue." in text and "Say more." in text
    # a record may give the conversation that led to the DSAT turn in place of its prompt
    chat = [{"role": "user", "content": "I write a story."}, {"role": "assistant", "content": "How can I help?"},
            {"role": "user", "content": "Name a colour."}]
    conversation = {"messages": chat, "dsat_response": "Blue.", "feedback": "Say more."}
    (tmp_path / "c.jsonl").write_text(json.dumps(conversation) + "\n")
    [record] = load_dsat_records(str(tmp_path / "c.jsonl"))
    assert record["prompt"] == chat
    assert hindsight_prompt(record, HINDSIGHT_TEMPLATE).startswith(
        "USER: I write a story.\nAssistant: How can I help?\nUSER: Name a colour.")
    (tmp_path / "c.jsonl").write_text(json.dumps({**conversation, "messages": chat[:2]}) + "\n")
    with pytest.raises(PromptError, match="c.jsonl:1: column 'messages': the last message is assistant"):
        load_dsat_records(str(tmp_path / "c.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PromptError, match="no records"):
        read_jsonl_records(tmp_path / "empty.jsonl", ("prompt",), "a seed pair")


def old_split_prompts(num_prompts, iterations, per_iteration, eval_size, seed=0, reuse=False):
    """split_prompts as it was before duplicates and lazy slices: the reference new code must equal."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(num_prompts).tolist()
    eval_ids, pool = order[:eval_size], order[eval_size:]
    needed = iterations * per_iteration
    stream, rounds = list(pool), 1
    while len(stream) < needed:
        stream += np.random.default_rng(seed + rounds).permutation(pool).tolist()
        rounds += 1
    return eval_ids, [stream[t * per_iteration:(t + 1) * per_iteration] for t in range(iterations)]


@pytest.mark.parametrize("pool, iterations, per_iteration, eval_size, seed, reuse", [
    (120, 3, 32, 16, 0, False),      # the quickstart
    (120, 13, 32, 16, 0, True),      # several passes over the pool
    (50, 7, 64, 5, 11, True),        # one iteration spans more than a whole pass
    (10, 4, 3, 1, 2, True), (1000, 5, 100, 200, 7, False), (7, 2, 3, 1, 0, False)])
def test_lazy_slices_equal_the_old_stream(pool, iterations, per_iteration, eval_size, seed, reuse):
    eval_ids, slices = split_prompts(pool, iterations, per_iteration, eval_size, seed, reuse)
    old_eval, old_slices = old_split_prompts(pool, iterations, per_iteration, eval_size, seed, reuse)
    assert eval_ids == old_eval and list(slices) == old_slices and len(slices) == iterations
    assert slices[-1] == old_slices[-1] and slices[1:3] == old_slices[1:3]
    with pytest.raises(IndexError):
        slices[iterations]


def test_quickstart_split_is_unchanged():
    """The shipped prompt file has no duplicates, so its split (and the quickstart's win rates) stay put."""
    from selfplay.recipe import load_recipe

    pool = load_prompt_pool(load_recipe(REPO / "recipes" / "quickstart-cpu.yaml"))
    assert pool.duplicates == 0 and len(pool.prompts) == 120
    assert (pool.eval_ids, list(pool.slices)) == old_split_prompts(120, 3, 32, 16)


def test_a_huge_reuse_run_splits_in_bounded_time_and_memory():
    import time
    import tracemalloc

    tracemalloc.start()
    started = time.perf_counter()
    eval_ids, slices = split_prompts(500, 10**12, 64, 20, seed=1, reuse=True)
    last = slices[10**12 - 1]
    seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(slices) == 10**12 and len(last) == 64 and set(last) <= set(range(500)) - set(eval_ids)
    assert seconds < 5 and peak < 10 * 2**20       # the old code built a list of 6.4e13 ids


def test_duplicates_are_never_selected_and_eval_shares_no_text_with_training(tmp_path):
    assert normalized("  Hello\tWORLD \n") == normalized("hello world") == "hello world"
    assert normalized("caf\u00e9") == normalized("cafe\u0301")         # composed and combining accents
    texts = [f"Prompt number {i % 15}" if i % 3 else f"  prompt NUMBER {i % 15} " for i in range(60)]
    assert distinct_ids(texts) == list(range(15))
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    from selfplay.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "quickstart-cpu.yaml",
                         [f"prompts.path={tmp_path / 'dup.jsonl'}", "prompts.eval_size=5", "prompts.per_iteration=5",
                          "iterations=2"])
    pool = load_prompt_pool(recipe)
    assert pool.duplicates == 45
    eval_text = {normalized(pool.prompts[i]) for i in pool.eval_ids}
    train_text = {normalized(pool.prompts[i]) for s in pool.slices for i in s}
    assert len(eval_text) == 5 and len(train_text) == 10 and not eval_text & train_text
    assert all(i < 15 for i in pool.eval_ids + [i for s in pool.slices for i in s])  # first rows only: ids stable
    recipe.iterations = 3
    with pytest.raises(PromptError, match=r"only 10 remain after the eval slice \(45 duplicate prompts dropped\)"):
        load_prompt_pool(recipe)


def test_drift_conversation_records_train_on_the_whole_conversation_under_the_system_prompt(tmp_path, tiny_policy):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from selfplay.methods.drift import DriftPairs
    from selfplay.recipe import load_recipe

    chat = [{"role": "user", "content": "I write a story."}, {"role": "assistant", "content": "How can I help?"},
            {"role": "user", "content": "Name a colour."}]
    rows = [{"messages": chat, "dsat_response": "Blue.", "feedback": "Say more."}] + [
        {"prompt": f"Name colour {i}.", "dsat_response": "Red.", "feedback": "Longer."} for i in range(8)]
    (tmp_path / "dsat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = load_recipe(REPO / "recipes" / "drift-cpu.yaml", [f"prompts.path={tmp_path / 'dsat.jsonl'}",
                         "prompts.eval_size=1", "prompts.per_iteration=2", "iterations=2", "prompts.system=Be kind."])
    pool = load_prompt_pool(recipe)
    system = {"role": "system", "content": "Be kind."}
    assert pool.prompts[0] == [system, *chat] and pool.prompts[1] == [system, {"role": "user", "content": "Name colour 0."}]
    samples = pa.table({"prompt_id": [0, 1], "text": ["Blue, like the sea.", "Red."], "token_ids": [[5, 6], [7]]})
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    ctx = SimpleNamespace(latest=lambda stage, name: SimpleNamespace(table=lambda: samples), tokenizer=tokenizer,
                          prompts=pool.prompts, records=pool.records)
    DriftPairs(1).run(ctx, tmp_path)
    pairs = pq.read_table(tmp_path / "pairs.parquet").to_pylist()
    assert pairs[0]["prompt"] == "Name a colour." and pairs[0]["rejected"] == "Blue."
    assert pairs[0]["prompt_token_ids"] == list(tokenizer.apply_chat_template(
        [system, *chat], add_generation_prompt=True, tokenize=True, return_dict=False))
