"""docs/recipes.md is generated from the recipe's pydantic models (scripts/recipe_docs.py) and
must match them: a changed field fails here until the file is regenerated."""

import importlib.util
import re
import typing

import pytest
from pydantic import BaseModel, Field

from conftest import REPO

SCRIPT = REPO / "scripts" / "recipe_docs.py"


@pytest.fixture(scope="module")
def recipe_docs():
    spec = importlib.util.spec_from_file_location("recipe_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(recipe_docs) -> str:
    return recipe_docs.render()


def rows_by_heading(text: str) -> dict[str, list[list[str]]]:
    """{heading text: the table rows under it, each a list of cells} (header rows left out)."""
    sections, heading = {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            sections[heading] = []
        elif line.startswith("| `") and heading is not None:
            sections[heading].append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return sections


def keys_of(rows: list[list[str]]) -> list[str]:
    return [row[0].strip("`") for row in rows]


def test_docs_recipes_md_is_up_to_date(generated):
    current = (REPO / "docs" / "recipes.md").read_text()
    assert current == generated, ("docs/recipes.md is out of date with selfplay/recipe.py; regenerate it: "
                                  ".venv/bin/python scripts/recipe_docs.py > docs/recipes.md")


def test_check_exits_1_on_a_stale_file_and_0_on_a_fresh_one(recipe_docs, generated, tmp_path, capsys):
    path = tmp_path / "recipes.md"
    path.write_text(generated.replace("`train.beta`", "`train.betta`"))
    assert recipe_docs.main(["--check", str(path)]) == 1
    assert "out of date" in capsys.readouterr().err
    path.write_text(generated)
    assert recipe_docs.main(["--check", str(path)]) == 0


def test_every_field_of_every_section_is_a_row(generated):
    """Read from the models directly: each section's rows are exactly its model's fields."""
    from selfplay.recipe import Recipe

    sections = rows_by_heading(generated)
    assert keys_of(sections["Top level"]) == list(Recipe.model_fields)
    checked = 0
    for name, info in Recipe.model_fields.items():
        models = [arg for arg in typing.get_args(info.annotation) or (info.annotation,)
                  if isinstance(arg, type) and issubclass(arg, BaseModel)]
        if len(models) == 1:  # a plain section (or an optional one); the judge union is the next test
            assert keys_of(sections[f"`{name}`"]) == [f"{name}.{field}" for field in models[0].model_fields]
            checked += 1
    assert checked >= 8


def test_each_judge_kind_lists_its_own_fields_under_its_heading(generated):
    from selfplay.judging.registry import JUDGES

    sections = rows_by_heading(generated)
    for name, kind in JUDGES.items():
        rows = sections[f"`annotate` with `type: {name}`"]
        assert keys_of(rows) == [f"annotate.{field}" for field in kind.config.model_fields]
    judge_row = dict(zip(keys_of(sections["`evaluate`"]), sections["`evaluate`"]))["evaluate.judge"]
    assert "(#annotate)" in judge_row[1] and "null" in judge_row[1]  # the same union, linked, not repeated


# -- the generic walk, on a made-up schema --------------------------------------------------------
class Inner(BaseModel):
    """Deepest section."""
    rate: float = Field(0.5, gt=0, le=1, description="a | rate")


class Middle(BaseModel):
    inner: Inner = Inner()
    mode: typing.Literal["a", "b"] = "a"


class Cat(BaseModel):
    kind: typing.Literal["cat"] = "cat"
    lives: int = Field(9, ge=1)


class Dog(BaseModel):
    kind: typing.Literal["dog"] = "dog"
    name: str


Pet = typing.Annotated[Cat | Dog, Field(discriminator="kind")]


class Item(BaseModel):
    size: int = 1


class Toy(BaseModel):
    middle: Middle = Middle()
    pet: Pet = Field(default_factory=lambda: Dog(name="rex"))
    other_pet: Pet | None = None
    extras: list[Item] = Field(default_factory=list)
    optional: Middle | None = None
    rule: str = Field("sppo", description="a pair rule (selfplay.methods.PAIR_RULES)")


def test_walk_documents_nested_unions_lists_and_registries(recipe_docs):
    from selfplay.methods import PAIR_RULES

    text = recipe_docs.Reference().markdown(Toy)
    sections = rows_by_heading(text)
    top = dict(zip(keys_of(sections["Top level"]), sections["Top level"]))
    # a section within a section has its own heading, with the full override keys
    assert keys_of(sections["`middle.inner`"]) == ["middle.inner.rate"]
    assert sections["`middle.inner`"][0] == ["`middle.inner.rate`", "`float`", "`0.5`", "in (0, 1]", "a \\| rate"]
    assert sections["`middle`"][1][1] == '`"a" \\| "b"`'
    # a union keyed on a Literal field (no Tag): one heading per kind, named by that field
    assert keys_of(sections["`pet` with `kind: dog`"]) == ["pet.kind", "pet.name"]
    assert sections["`pet` with `kind: cat`"][1][3] == ">= 1"
    assert top["pet"][2] == '`{"kind": "dog", "name": "rex"}`'  # a model default leads with its kind
    # met again: linked to the first heading, not repeated
    assert top["other_pet"][1] == "one of the kinds in [pet](#pet) \\| null"
    assert text.count("### `pet` with `kind: cat`") == 1
    # models inside a list get a section of their own; an optional section links to its model's
    assert top["extras"][1] == "list[section [extras\\[\\]](#extras)]"
    assert keys_of(sections["`extras[]`"]) == ["extras[].size"]
    assert top["optional"][1] == "section [middle](#middle) \\| null"
    # a registry named in a description lists its keys
    assert top["rule"][3] == ", ".join(f"`{name}`" for name in PAIR_RULES)

