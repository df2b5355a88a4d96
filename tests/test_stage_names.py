"""Stage and artifact names are declared once (selfplay/stage_names.py): the pipeline's stages
take theirs from there, and the modules that read runs (lineage and status, the compare report,
W&B artifacts, the driver's summary, the CLI, the run context) never spell one out."""

import ast

import pytest

from selfplay import pipeline, stage_names
from selfplay.recipe import load_recipe

from conftest import REPO

DECLARED = {value for key, value in vars(stage_names).items() if key.isupper()}
STAGES = {stage_names.BASELINE, stage_names.REFERENCE_SOUP, stage_names.SEED_PAIRS, stage_names.SEED,
          stage_names.GENERATE, stage_names.ANNOTATE, stage_names.PAIRS, stage_names.TRAIN, stage_names.EVAL_GEN,
          stage_names.EVALUATE, stage_names.MAGPIE}
READERS = ["lineage.py", "report/read.py", "track/wandb_artifacts.py", "driver.py", "cli.py", "context.py"]


def spelled_out_names(path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in the module that is a declared name, docstrings
    left out; the first argument of wandb_artifacts.Kind(...) is W&B's own artifact name
    (`<run>-pairs`, `<run>-policy`), which stays as W&B has it whatever the stage is called."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skipped.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Kind" and node.args:
            skipped.add(id(node.args[0]))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in DECLARED and id(node) not in skipped]


@pytest.mark.parametrize("module", READERS)
def test_run_readers_name_stages_and_artifacts_through_the_declarations(module):
    assert spelled_out_names(REPO / "selfplay" / module) == []


def test_every_stage_of_the_pipeline_is_declared():
    """Whatever the recipe, the stages the driver walks carry declared names and produce declared
    artifacts (a stage module that spelled its own would fail here)."""
    recipes = [load_recipe(REPO / "recipes" / "quickstart-cpu.yaml", ["train.reference=soup",
                                                                      "train.soup=[tiny:llama, tiny:llama]"]),
               load_recipe(REPO / "recipes" / "drift-cpu.yaml"),
               load_recipe(REPO / "recipes" / "quickstart-cpu.yaml", ["prompts.source=magpie"])]
    seen = set()
    for recipe in recipes:
        for iteration in range(recipe.iterations + 1):
            for stage in pipeline.stages(recipe, iteration):
                assert stage.name in STAGES, stage
                assert set(stage.produces) <= DECLARED - STAGES, stage
                seen.add(stage.name)
    assert seen == STAGES
