import pytest

from selfplay.cli import main
from selfplay.recipe import RecipeError, load_recipe

from conftest import REPO

QUICKSTART = REPO / "recipes" / "quickstart-cpu.yaml"


def test_quickstart_recipe_loads_with_overrides():
    recipe = load_recipe(QUICKSTART, ["train.beta=0.05", "iterations=2", "generate.samples_per_prompt=3"])
    assert recipe.train.beta == 0.05 and recipe.iterations == 2 and recipe.generate.samples_per_prompt == 3
    assert recipe.annotate.type == "function" and recipe.annotate.function == "selfplay.judges:letter_e_count"
    assert recipe.prompts.path.endswith("quickstart_prompts.jsonl")  # resolved against the recipe folder


@pytest.mark.parametrize("override, field, allowed", [
    ("generate.samples_per_prompt=1", "generate.samples_per_prompt", "greater than or equal to 2"),
    ("train.beta=0", "train.beta", "greater than 0"),
    ("train.beta=-1", "train.beta", "greater than 0"),
    ("train.bta=0.1", "train.bta", "unknown key"),
    ("train.beta=abc", "train.beta", "valid number"),
    ("prompts.path=missing.jsonl", "prompts.path", "not found"),
    ("annotate.function=no_such_module:score", "annotate.function", "cannot import"),
    ("annotate.function=selfplay.judges:no_such_fn", "annotate.function", "no callable"),
    ("train.loss=ppo", "train.loss", "must be one of"),
    ("pairs.type=magic", "pairs.type", "must be one of"),
    ("train.zero_stage=4", "train.zero_stage", "0, 1, 2 or 3"),
    ("train.global_batch_size=6", "train.global_batch_size", "multiple of"),
    # every float finite, every range the one its math needs (issue 13 finding 3)
    ("train.learning_rate=.inf", "train.learning_rate", "finite"),
    ("train.beta=.inf", "train.beta", "finite"),
    ("train.beta=.nan", "train.beta", "finite"),
    ("generate.temperature=.inf", "generate.temperature", "finite"),
    ("generate.temperature=-1", "generate.temperature", "greater than or equal to 0"),
    ("generate.top_p=0", "generate.top_p", "greater than 0"),
    ("evaluate.top_p=1.5", "evaluate.top_p", "less than or equal to 1"),
    ("drift.temperature=.inf", "drift.temperature", "finite"),
    ("train.weight_decay=.inf", "train.weight_decay", "finite"),
    ("train.max_grad_norm=.inf", "train.max_grad_norm", "finite"),
    ("train.max_grad_norm=-1", "train.max_grad_norm", "greater than or equal to 0"),
    ("train.warmup_ratio=1", "train.warmup_ratio", "less than 1"),
    ("generate.kv_cache_gib=.inf", "generate.kv_cache_gib", "finite"),
    ("generate.num_gpus_per_replica=.inf", "generate.num_gpus_per_replica", "finite"),
    ("annotate.temperature=.inf", "annotate.temperature", "finite"),
    # the judge union (issue 11 item 3): a field of another judge, an unknown type, a missing field
    ("annotate.type=pairrm annotate.path=tiny:pairrm", "annotate.function", "not a field of the pairrm judge"),
    ("annotate.type=magic", "annotate.type", "must be one of function, pairrm, reward_model, selfie, llm_judge, got 'magic'"),
    ("annotate.type=reward_model annotate.function=null", "annotate.path", "required field is missing"),
    ("annotate.num_gpus=1", "annotate.num_gpus", "not a field of the function judge"),
    ("evaluate.judge.type=selfie evaluate.judge.path=tiny:reward", "evaluate.judge.path", "not a field of the selfie judge"),
    ("train.loss=dpo train.loss_options.label_smoothing=5", "train.loss_options.label_smoothing", "[0, 0.5)"),
    ("train.loss=dpo train.loss_options.label_smoothing=0.5", "train.loss_options.label_smoothing", "[0, 0.5)"),
    ("train.loss=dpo train.loss_options.label_smoothing=-0.1", "train.loss_options.label_smoothing", "[0, 0.5)"),
    ("train.loss=dpo train.loss_options.label_smoothing=.nan", "train.loss_options.label_smoothing", "finite"),
    ("train.loss=drift train.loss_options.nll_weight=-1", "train.loss_options.nll_weight", ">= 0"),
    ("train.loss=selfie train.loss_options.alpha=2", "train.loss_options.alpha", "in [0, 1]"),
    ("train.loss=selfie train.loss_options.threshold=0.1", "train.loss_options.threshold", "allowed: alpha"),
    ("train.loss=ipo train.loss_options.chosen_lengths=3", "train.loss_options.chosen_lengths", "allowed: none"),
    ("train.lora.r=0", "train.lora.r", "greater than or equal to 1"),
    ("train.lora.dropout=1", "train.lora.dropout", "less than 1"),
    ("train.lora.target_modules=[]", "train.lora.target_modules", "at least 1 item"),
    ("train.lora.r=4 train.zero_stage=3", "train.lora", "zero_stage 0, 1 or 2"),
    ("seed=-1", "seed", "greater than or equal to 0"),
    ("train.seed=4294967296", "train.seed", "less than 2147483648"),
    ("prompts.shuffle_seed=-3", "prompts.shuffle_seed", "greater than or equal to 0"),
    # settings that only conflict with each other (finding 8)
    ("evaluate.max_tokens=-5", "evaluate.max_tokens", "greater than 0"),
    ("evaluate.max_tokens=1024", "evaluate.max_tokens", "smaller than generate.max_model_len (1024)"),
    ("generate.max_tokens=2048", "generate.max_tokens", "smaller than generate.max_model_len (1024)"),
    ("seed_training.path=data/seed_pairs.jsonl seed_training.loss=bogus", "seed_training.loss", "must be one of asft, dpo"),
    ("seed_training.path=data/seed_pairs.jsonl seed_training.loss=sppo_single", "seed_training.loss",
     "chosen_beats_rejected"),
    ("seed_training.path=data/seed_pairs.jsonl seed_training.learning_rate=.inf", "seed_training.learning_rate",
     "finite"),
])
def test_bad_recipe_values_exit_2_with_one_line(capsys, override, field, allowed):
    code = main(["validate", str(QUICKSTART), *override.split()])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert field in err and allowed in err, err
    assert "Traceback" not in err


def test_bad_override_syntax_and_missing_recipe(capsys, tmp_path):
    assert main(["validate", str(QUICKSTART), "train.beta"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: [1,\n")
    assert main(["validate", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_too_few_prompts_is_a_clear_error(capsys):
    code = main(["validate", str(QUICKSTART), "iterations=10", "prompts.per_iteration=50"])
    err = capsys.readouterr().err
    assert code == 2 and "prompts.reuse" in err and "only 104 remain" in err


def test_validate_ok(capsys):
    assert main(["validate", str(QUICKSTART)]) == 0
    assert "ok (3 iterations, 120 prompts, K=4" in capsys.readouterr().out


def test_recipe_error_type_for_library_users(tmp_path):
    with pytest.raises(RecipeError, match="generate.samples_per_prompt"):
        load_recipe(QUICKSTART, ["generate.samples_per_prompt=1"])


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid(recipe):
    """Paper recipes point at cluster paths (prompts, seed pairs): their schema only (tests/test_paper_recipes.py)."""
    loaded = load_recipe(recipe, check_paths=recipe.parent.name == "recipes")
    assert loaded.iterations >= 1
    first_line = recipe.read_text().splitlines()[0]
    assert first_line.startswith("#")                        # every recipe starts by saying what it is
    assert "selfplay run recipes/" in recipe.read_text()     # and the command that runs it


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_local_recipe_passes_selfplay_validate(capsys, recipe):
    """`selfplay validate` (schema and pre-flight) on each runnable recipe; its judge sections parse to
    the config class of the type they name."""
    import yaml

    from selfplay.judging.registry import JUDGES

    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    assert f"{recipe.name}: ok" in capsys.readouterr().out
    data, loaded = yaml.safe_load(recipe.read_text()), load_recipe(recipe)
    assert type(loaded.annotate) is JUDGES[data["annotate"]["type"]].config
    judge = data.get("evaluate", {}).get("judge")
    assert (loaded.evaluate.judge is None) if judge is None else type(loaded.evaluate.judge) is JUDGES[judge["type"]].config


def test_seed_stage_settings_are_trains_with_the_seed_fields():
    """What the seed stage trains with: validated like train, and the dict the stage digests as before."""
    recipe = load_recipe(REPO / "recipes" / "selfie-cpu.yaml", ["seed_training.beta=0.2"])
    seed = recipe.seed_train_config()
    before = recipe.train.model_copy(update={"loss": "dpo", "epochs": 8, "reference": "initial", "loss_options": {},
                                             "learning_rate": recipe.train.learning_rate, "beta": 0.2})
    assert seed.model_dump() == before.model_dump()


def test_zero_max_grad_norm_means_no_clipping_and_is_allowed():
    assert load_recipe(QUICKSTART, ["train.max_grad_norm=0"]).train.max_grad_norm == 0


def test_validate_checks_the_policy_folder(capsys, tmp_path, tiny_policy):
    """Issue 9 item 5: a policy path that does not exist is an error, not `ok`; a real one passes."""
    assert main(["validate", str(QUICKSTART), f"policy.path={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy.path" in err and "does not exist" in err, err
    assert main(["validate", str(QUICKSTART), f"policy.path={tiny_policy}"]) == 0
    assert "ok (3 iterations" in capsys.readouterr().out


@pytest.mark.parametrize("override, expected", [
    ("drift.hindsight_template={prompt} {answer}", "unknown placeholder {answer}; allowed: {prompt}"),
    ("drift.hindsight_template=Answer {prompt", "not a format string"),
    ("name=a: b: c", "name: must be 1-100 characters"),    # not valid YAML: taken as the text itself
])
def test_templates_and_override_text_that_is_not_yaml(capsys, override, expected):
    assert main(["validate", str(REPO / "recipes" / "drift-cpu.yaml"), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err, err


def test_a_key_under_a_section_given_by_name_keeps_the_name_as_its_type():
    """`annotate.shaping=lsc annotate.shaping.k=0.5`: the shaping named, then one of its keys
    set, is an lsc section with that k (it failed: 'shaping' is not a section). Keys of a
    section written out in full are set as before."""
    recipe = load_recipe(REPO / "recipes" / "par-cpu.yaml", ["annotate.shaping.k=2", "annotate.shaping.references=3"])
    assert recipe.annotate.shaping.type == "par" and recipe.annotate.shaping.k == 2
    assert recipe.annotate.shaping.references == 3
    lsc = load_recipe(REPO / "recipes" / "par-cpu.yaml", ["annotate.shaping=lsc", "annotate.shaping.k=0.5"])
    assert lsc.annotate.shaping.type == "lsc" and lsc.annotate.shaping.k == 0.5


@pytest.mark.parametrize("loss, pair_type, beta", [
    ("sppo", "sppo", 0.001), ("dpo", "best_worst", 0.1), ("ipo", "best_worst", 0.1), ("tpo", "triple", 0.01),
    ("asft", "best_worst", 1.0)])
def test_a_recipe_without_train_beta_gets_its_losss_own(tmp_path, loss, pair_type, beta):
    """One default for every loss gave DPO SPPO's 0.001; each loss's is now the value of its
    paper or reference code (ALGORITHMS.md), recorded in the resolved recipe."""
    from selfplay.recipe import recipe_to_yaml

    text = QUICKSTART.read_text()
    assert "  beta: 0.02" in text
    path = tmp_path / "no-beta.yaml"
    path.write_text(text.replace("  beta: 0.02", "  # no beta"))
    settings = [f"train.loss={loss}", f"pairs.type={pair_type}", f"prompts.path={REPO}/recipes/data/quickstart_prompts.jsonl"]
    recipe = load_recipe(path, settings)
    assert recipe.train.beta == beta
    assert f"beta: {beta}" in recipe_to_yaml(recipe)
    assert load_recipe(path, [*settings, "train.beta=0.5"]).train.beta == 0.5
