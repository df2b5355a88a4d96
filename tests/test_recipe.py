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
])
def test_bad_recipe_values_exit_2_with_one_line(capsys, override, field, allowed):
    code = main(["validate", str(QUICKSTART), override])
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
def test_every_shipped_recipe_is_valid(recipe, prompts_file):
    """Paper recipes point at cluster paths; only the prompt file is swapped for a local one."""
    overrides = [] if recipe.parent.name == "recipes" else [f"prompts.path={prompts_file}"]
    loaded = load_recipe(recipe, overrides)
    assert loaded.iterations >= 1
    first_line = recipe.read_text().splitlines()[0]
    assert first_line.startswith("#")                        # every recipe starts by saying what it is
    assert "selfplay run recipes/" in recipe.read_text()     # and the command that runs it
