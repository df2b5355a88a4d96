"""Bad inputs through the real CLI (`selfplay.cli.main`), one process per case (forked from one that
imported the CLI: tests/forked_cli.py).

Each case must end with exit code 2, exactly one line on stderr naming the field or file, no
traceback, and nothing written: the working directory and the model cache are unchanged and,
for `run`, no run directory (so no run.json) exists. The `run` cases fail in pre-flight,
before Ray starts. Cases: issue 13 findings 3 (non-finite settings), 7 (bad policy paths),
8 (evaluate.max_tokens, tiny kinds), 9 (damaged prompt files), 10 (validate of a huge reuse
run in bounded time), 11 (duplicates), issue 9 item 5 (validate on a missing policy), and
issue 19 findings 9 (recipe YAML: not UTF-8, duplicate keys, deep nesting), 10 (greedy
decoding with several samples per prompt) and 11 (a run directory that is not a run, or inside one),
issue 18's Magpie fields (prompts.source, prompts.magpie) and issue 22's conversations (rows with a
bad role, order or empty turn, named by line or row; prompts.system).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO

QUICKSTART = REPO / "recipes" / "quickstart-cpu.yaml"
DPO = REPO / "recipes" / "iterative-dpo-cpu.yaml"
SELFIE = REPO / "recipes" / "selfie-cpu.yaml"
CHAT = REPO / "recipes" / "chat-cpu.yaml"
LLM = ["annotate.type=llm_judge", "annotate.function=null", "annotate.path=tiny:llama"]


def make_inputs(root: Path) -> None:
    """Damaged or wrong inputs a user can produce, under root/inputs."""
    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "latin1.jsonl").write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9 au lait"}\n')
    (inputs / "not-a-dataset").mkdir()
    (inputs / "not-a-dataset" / "notes.txt").write_text("hello")
    (inputs / "corrupt.parquet").write_bytes(b"PAR1" + os.urandom(64))
    pq.write_table(pa.table({"prompt": list(range(40))}), inputs / "numbers.parquet")
    (inputs / "no-placeholders.txt").write_text("Rate this response from 1 to 5.\n")
    (inputs / "no-config-model").mkdir()
    (inputs / "no-config-model" / "model.safetensors").write_bytes(b"")
    # 40 rows, only 12 distinct texts (case and whitespace differ): too few for 3 x 32 + 16
    rows = [f"Tell me about  Topic {i % 12}" if i % 2 else f"tell me about topic {i % 12}" for i in range(40)]
    (inputs / "duplicates.jsonl").write_text("".join(json.dumps({"prompt": r}) + "\n" for r in rows))
    # issue 19 finding 9: recipes that YAML reads badly (quickstart's `iterations: 3` is its line 9)
    (inputs / "latin1.yaml").write_bytes(QUICKSTART.read_bytes() + b"name: caf\xe9\n")
    (inputs / "twice.yaml").write_text(QUICKSTART.read_text() + "iterations: 1\n")
    (inputs / "deep.yaml").write_text("iterations: " + "[" * 5000 + "]" * 5000 + "\n")
    # issue 19 finding 11: a folder of another tool's files, and a run directory to nest a run in
    (inputs / "other-tool").mkdir()
    (inputs / "other-tool" / "metrics.jsonl").write_text('{"loss": 1.0}\n')
    (inputs / "outer-run" / "iter-001").mkdir(parents=True)
    (inputs / "outer-run" / "run.json").write_text("{}")
    # issue 22: conversations with a bad row (line 3 / row 2), each problem its own file
    good = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    bad = {"ends-with-assistant": [*good, {"role": "assistant", "content": "Blue."}],
           "bad-role": [{"role": "human", "content": "hi"}],
           "empty-turn": [{"role": "user", "content": "  "}],
           "two-users": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
           "late-system": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                           {"role": "user", "content": "b"}]}
    for name, conversation in bad.items():
        (inputs / f"{name}.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in
                                                      (good, good, conversation, *[good] * 40)))
    pq.write_table(pa.table({"messages": [good, good, bad["two-users"]]}), inputs / "two-users.parquet")


CASES = [
    # finding 3: every float is finite and in the range its math needs
    ("lr-inf", "run", QUICKSTART, ["train.learning_rate=.inf"], "train.learning_rate"),
    ("beta-inf", "validate", QUICKSTART, ["train.beta=.inf"], "train.beta"),
    ("temperature-inf", "validate", QUICKSTART, ["generate.temperature=.inf"], "generate.temperature"),
    ("eval-temperature-nan", "validate", QUICKSTART, ["evaluate.temperature=.nan"], "evaluate.temperature"),
    ("weight-decay-inf", "validate", QUICKSTART, ["train.weight_decay=.inf"], "train.weight_decay"),
    ("max-grad-norm-inf", "validate", QUICKSTART, ["train.max_grad_norm=.inf"], "train.max_grad_norm"),
    ("kv-cache-inf", "validate", QUICKSTART, ["generate.kv_cache_gib=.inf"], "generate.kv_cache_gib"),
    ("label-smoothing-5", "validate", DPO, ["train.loss_options.label_smoothing=5"], "[0, 0.5)"),
    ("label-smoothing-nan", "validate", DPO, ["train.loss_options.label_smoothing=.nan"],
     "train.loss_options.label_smoothing"),
    ("annotate-temperature-inf", "validate", QUICKSTART, ["annotate.temperature=.inf"], "annotate.temperature"),
    # issue 18: the LLM judge
    ("llm-judge-custom-without-template", "validate", QUICKSTART, [*LLM, "annotate.rubric=custom"], "annotate.template"),
    ("llm-judge-template-not-found", "validate", QUICKSTART,
     [*LLM, "annotate.rubric=custom", "annotate.template={root}/no/rubric.txt"], "annotate.template: file or folder not found"),
    ("llm-judge-template-without-placeholders", "run", QUICKSTART,
     [*LLM, "annotate.rubric=custom", "annotate.template={root}/inputs/no-placeholders.txt"],
     "annotate.template: "),
    ("llm-judge-unknown-aspect", "validate", QUICKSTART, [*LLM, "annotate.aspects=[style]"], "annotate.aspects"),
    ("llm-judge-missing-fraction", "validate", QUICKSTART, [*LLM, "annotate.max_missing_fraction=1.5"],
     "annotate.max_missing_fraction"),
    ("llm-judge-score", "validate", QUICKSTART, [*LLM, "annotate.score=mean"], "annotate.score"),
    ("llm-judge-rubric", "validate", QUICKSTART, [*LLM, "annotate.rubric=likert"], "annotate.rubric"),
    ("llm-judge-aspect-weights", "validate", QUICKSTART, [*LLM, "annotate.aspect_weights={honesty: 1.0}"],
     "annotate.aspect_weights: give a weight for each of aspects"),
    ("llm-judge-sampling-temperature", "validate", QUICKSTART, [*LLM, "annotate.sampling_temperature=-1"],
     "annotate.sampling_temperature"),
    ("llm-judge-retries", "validate", QUICKSTART, [*LLM, "annotate.retries=-1"], "annotate.retries"),
    ("llm-judge-max-tokens", "validate", QUICKSTART, [*LLM, "annotate.max_tokens=0"], "annotate.max_tokens"),
    ("llm-judge-context", "validate", QUICKSTART, [*LLM, "annotate.max_model_len=16"], "annotate.max_model_len: 16 leaves no room"),
    ("llm-judge-replicas", "validate", QUICKSTART, [*LLM, "annotate.replicas=0"], "annotate.replicas"),
    ("llm-judge-model-missing", "run", QUICKSTART,
     ["annotate.type=llm_judge", "annotate.function=null", "annotate.path={root}/no/judge"], "annotate.path"),
    ("llm-judge-a-scoring-model", "run", QUICKSTART,
     ["annotate.type=llm_judge", "annotate.function=null", "annotate.path=tiny:reward"], "annotate.path"),
    # issue 18: PAR shaping
    ("shaping-unknown", "validate", QUICKSTART, ["annotate.shaping=parr"], "annotate.shaping"),
    ("shaping-k-zero", "run", QUICKSTART, ["annotate.shaping.type=par", "annotate.shaping.k=0"], "annotate.shaping.k"),
    ("shaping-no-references", "validate", QUICKSTART, ["annotate.shaping.references=0"], "annotate.shaping.references"),
    ("shaping-top-p", "validate", QUICKSTART, ["annotate.shaping.top_p=1.5"], "annotate.shaping.top_p"),
    ("shaping-negative-length-penalty", "validate", QUICKSTART, ["annotate.shaping.length_penalty=-0.01"],
     "annotate.shaping.length_penalty"),
    ("shaping-a-pairwise-judge", "validate", QUICKSTART,
     ["annotate.type=pairrm", "annotate.function=null", "annotate.path=tiny:pairrm", "annotate.shaping=par"],
     "annotate.shaping"),
    ("shaping-the-eval-judge", "validate", QUICKSTART,
     ["evaluate.judge.function=selfplay.judges:letter_e_fraction", "evaluate.judge.shaping=lsc"],
     "evaluate.judge.shaping"),
    ("seed-loss-bogus", "validate", SELFIE, ["seed_training.loss=bogus"], "seed_training.loss"),
    ("seed-loss-needs-targets", "validate", SELFIE, ["seed_training.loss=sppo"], "chosen_win_rate"),
    ("negative-seed", "validate", QUICKSTART, ["prompts.shuffle_seed=-1"], "prompts.shuffle_seed"),
    ("max-tokens-fill-context", "validate", QUICKSTART, ["generate.max_tokens=1024"], "generate.max_model_len"),
    ("template-placeholder", "validate", REPO / "recipes" / "drift-cpu.yaml",
     ["drift.hindsight_template={prompt} {answer}"], "unknown placeholder {answer}"),
    # finding 8
    ("eval-max-tokens-negative", "run", QUICKSTART, ["evaluate.max_tokens=-5"], "evaluate.max_tokens"),
    ("eval-max-tokens-over-context", "validate", QUICKSTART, ["evaluate.max_tokens=4096"], "generate.max_model_len"),
    ("tiny-unknown", "run", QUICKSTART, ["policy.path=tiny:unknown"], "allowed: tiny:llama"),
    ("tiny-judge-as-policy", "validate", QUICKSTART, ["policy.path=tiny:pairrm"], "allowed: tiny:llama"),
    # finding 7 and issue 9 item 5: policy folders, checked before run.json exists
    ("missing-policy-validate", "validate", QUICKSTART, ["policy.path={root}/no/such/model"], "does not exist"),
    ("missing-policy-run", "run", QUICKSTART, ["policy.path={root}/no/such/model"], "does not exist"),
    ("policy-without-config", "run", QUICKSTART, ["policy.path={root}/inputs/no-config-model"], "no config.json"),
    ("hub-id", "run", QUICKSTART, ["policy.path=some-org/some-model"], "hf download some-org/some-model"),
    ("judge-folder-missing", "validate", QUICKSTART,
     ["annotate.type=reward_model", "annotate.function=null", "annotate.path={root}/no/judge"], "annotate.path"),
    ("soup-missing", "validate", DPO, ["train.reference=soup", "train.soup=[tiny:llama,{root}/no/soup]"],
     "train.soup[1]"),
    # finding 9: damaged prompt files, named with the line or row
    ("prompt-not-utf8", "run", QUICKSTART, ["prompts.path={root}/inputs/latin1.jsonl"], "latin1.jsonl:2: not UTF-8"),
    ("prompt-folder-not-dataset", "validate", QUICKSTART, ["prompts.path={root}/inputs/not-a-dataset"],
     "not a readable datasets folder"),
    ("prompt-corrupt-parquet", "run", QUICKSTART, ["prompts.path={root}/inputs/corrupt.parquet"],
     "not a readable Parquet file"),
    ("prompt-parquet-not-strings", "validate", QUICKSTART, ["prompts.path={root}/inputs/numbers.parquet"],
     "row 0 of column 'prompt'"),
    # finding 11: duplicates are dropped, and the shortfall says so
    ("duplicates-too-few", "validate", QUICKSTART, ["prompts.path={root}/inputs/duplicates.jsonl"],
     "28 duplicate prompts dropped"),
    # issue 19 finding 9: recipe YAML (the file, the overrides), one line each
    ("recipe-not-utf8", "run", Path("inputs/latin1.yaml"), [], "inputs/latin1.yaml:48: not UTF-8 (byte 0xe9"),
    ("recipe-duplicate-key", "run", Path("inputs/twice.yaml"), [],
     "inputs/twice.yaml: duplicate key 'iterations' (lines 9 and 48)"),
    ("recipe-too-deep", "validate", Path("inputs/deep.yaml"), [], "inputs/deep.yaml: nested too deeply"),
    ("override-duplicate-key", "validate", QUICKSTART, ["generate.engine_args={a: 1, a: 2}"],
     "override generate.engine_args: duplicate key 'a'"),
    ("override-too-deep", "validate", QUICKSTART, ["train.soup=" + "[" * 5000 + "]" * 5000],
     "override train.soup: nested too deeply"),
    # issue 19 finding 10: greedy decoding gives one sample per prompt
    ("generate-greedy", "run", QUICKSTART, ["generate.temperature=0"], "generate.samples_per_prompt is 4"),
    ("evaluate-greedy", "validate", QUICKSTART, ["evaluate.temperature=0", "evaluate.samples_per_prompt=2"],
     "evaluate.temperature: 0.0 is greedy decoding"),
    # issue 19 finding 11: a run directory that is somebody else's folder, or inside another run
    ("run-dir-not-a-run", "run", QUICKSTART, ["--run-dir={root}/inputs/other-tool"],
     "other-tool: not a selfplay run (no run.json) and not empty"),
    ("run-dir-inside-a-run", "run", QUICKSTART, ["--run-dir={root}/inputs/outer-run/iter-001/nested"],
     "inside the run directory"),
    # issue 18 part 2: Magpie's recipe fields (prompts.source, prompts.magpie)
    ("prompts-source-bogus", "validate", QUICKSTART, ["prompts.source=bogus"], "prompts.source"),
    ("magpie-candidates-zero", "validate", QUICKSTART, ["prompts.source=magpie", "prompts.magpie.candidates=0"],
     "prompts.magpie.candidates"),
    ("magpie-max-tokens-zero", "validate", QUICKSTART, ["prompts.magpie.max_tokens=0"], "prompts.magpie.max_tokens"),
    ("magpie-max-tokens-over-context", "validate", QUICKSTART, ["prompts.magpie.max_tokens=4096"],
     "prompts.magpie.max_tokens (4096) must be smaller than generate.max_model_len"),
    ("magpie-min-chars-zero", "validate", QUICKSTART, ["prompts.magpie.min_chars=0"], "prompts.magpie.min_chars"),
    ("magpie-min-over-max", "validate", QUICKSTART, ["prompts.magpie.min_chars=50", "prompts.magpie.max_chars=10"],
     "prompts.magpie.min_chars (50) must not exceed prompts.magpie.max_chars (10)"),
    ("magpie-ngram-zero", "validate", QUICKSTART, ["prompts.magpie.repeat_ngram=0"], "prompts.magpie.repeat_ngram"),
    ("magpie-repeats-zero", "validate", QUICKSTART, ["prompts.magpie.max_ngram_repeats=0"],
     "prompts.magpie.max_ngram_repeats"),
    ("magpie-near-duplicate-2", "validate", QUICKSTART, ["prompts.magpie.near_duplicate=2"],
     "prompts.magpie.near_duplicate"),
    ("magpie-near-duplicate-nan", "validate", QUICKSTART, ["prompts.magpie.near_duplicate=.nan"],
     "prompts.magpie.near_duplicate"),
    ("magpie-unknown-key", "validate", QUICKSTART, ["prompts.magpie.filters=1"], "prompts.magpie.filters"),
    ("magpie-with-drift", "validate", REPO / "recipes" / "drift-cpu.yaml", ["prompts.source=magpie"],
     "prompts.source magpie: pairs.type 'drift'"),
    ("magpie-model-missing", "run", QUICKSTART, ["prompts.source=magpie", "prompts.magpie.model={root}/no/such/model"],
     "prompts.magpie.model"),
    ("magpie-model-judge", "validate", QUICKSTART, ["prompts.source=magpie", "prompts.magpie.model=tiny:pairrm"],
     "prompts.magpie.model: tiny model 'tiny:pairrm' does not fit here"),
    # issue 22: conversations, each bad row named by its line (JSONL) or row (Parquet)
    ("chat-ends-with-assistant", "run", CHAT, ["prompts.path={root}/inputs/ends-with-assistant.jsonl"],
     "ends-with-assistant.jsonl:3: column 'messages': the last message is assistant"),
    ("chat-bad-role", "validate", CHAT, ["prompts.path={root}/inputs/bad-role.jsonl"],
     "bad-role.jsonl:3: column 'messages': message 0 has role 'human'; allowed: system, user, assistant"),
    ("chat-empty-turn", "validate", CHAT, ["prompts.path={root}/inputs/empty-turn.jsonl"],
     "empty-turn.jsonl:3: column 'messages': message 0 (user) has empty content"),
    ("chat-two-users", "validate", CHAT, ["prompts.path={root}/inputs/two-users.jsonl"],
     "two-users.jsonl:3: column 'messages': message 1 is user but assistant was expected"),
    ("chat-late-system", "validate", CHAT, ["prompts.path={root}/inputs/late-system.jsonl"],
     "message 1 is a system message; only the first message may be one"),
    ("chat-parquet-row", "run", CHAT, ["prompts.path={root}/inputs/two-users.parquet"],
     "two-users.parquet: row 2 of column 'messages': message 1 is user"),
    ("chat-no-messages-column", "validate", CHAT, ["prompts.path={root}/inputs/numbers.parquet"],
     "prompts.messages_field: column 'messages' not in"),
    ("chat-field-on-conversations", "validate", QUICKSTART, ["prompts.path={root}/inputs/two-users.parquet"],
     "set prompts.messages_field=messages"),
    ("chat-empty-system", "validate", CHAT, ["prompts.system=' '"], "prompts.system"),
    ("chat-replace-without-system", "validate", QUICKSTART, ["prompts.system_mode=replace"],
     "prompts.system_mode: replace needs prompts.system"),
    ("chat-system-mode-bogus", "validate", CHAT, ["prompts.system_mode=prepend"], "prompts.system_mode"),
]


def snapshot(*folders: Path) -> dict[str, int]:
    return {str(path): path.stat().st_size for folder in folders if folder.exists()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    make_inputs(root)
    env = {**os.environ, "SELFPLAY_CACHE": str(root / "cache"), "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "offline", "RAY_AUTH_MODE": "disabled"}
    return root, env


def cli(root: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfplay.cli", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def outcomes(sandbox):
    """Every case's CLI result, and the files present before and after them all. Each case runs in
    a process of its own forked from one that imported the CLI once (tests/forked_cli.py): in a
    fresh interpreter a case is mostly the import of torch and transformers."""
    root, env = sandbox
    before = snapshot(root)
    commands = []
    for name, command, recipe, overrides, _ in CASES:
        own_dir = command != "run" or any(o.startswith("--run-dir=") for o in overrides)
        extra = [] if own_dir else ["--run-dir", str(root / "runs" / name)]
        commands.append([command, str(recipe), *[o.replace("{root}", str(root)) for o in overrides], *extra])
    ran = subprocess.run([sys.executable, str(REPO / "tests" / "forked_cli.py"), str(root)], input=json.dumps(commands),
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    results = {case[0]: subprocess.CompletedProcess(argv, **result)
               for case, argv, result in zip(CASES, commands, json.loads(ran.stdout))}
    return results, before, snapshot(root)


@pytest.mark.parametrize("name, command, recipe, overrides, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(sandbox, outcomes, name, command, recipe, overrides, expected):
    root, _ = sandbox
    results, before, after = outcomes
    result = results[name]
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, err[-3000:])
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith("selfplay: error: "), err
    assert expected in err, err
    assert not (root / "runs" / name).exists()    # no run directory, so no run.json frozen
    assert after == before, sorted(set(after) ^ set(before))  # nothing written anywhere else either


def test_validate_of_a_huge_reuse_run_is_bounded(sandbox):
    """Finding 10: the prompt stream of 10**9 iterations is never built; validate answers at once."""
    root, env = sandbox
    started = time.monotonic()
    result = cli(root, env, "validate", str(QUICKSTART), "iterations=1000000000", "prompts.reuse=true", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok (1000000000 iterations" in result.stdout
    # the import of torch and transformers is most of it (2-10 s); the old code never finished
    assert time.monotonic() - started < 120


def test_validate_reports_dropped_duplicates(sandbox):
    root, env = sandbox
    result = cli(root, env, "validate", str(QUICKSTART), f"prompts.path={root}/inputs/duplicates.jsonl",
                 "iterations=1", "prompts.per_iteration=4", "prompts.eval_size=4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "40 prompts (28 duplicates dropped)" in result.stdout
