"""The plugin shape: what makes a method lives in its module under selfplay/methods/.

- no code outside selfplay/methods/ compares or branches on a method's loss or pair-rule name
  (a grep over selfplay/ for the names as string literals in comparisons and conditions);
- the registries merge every method's declarations, in METHODS order, and refuse a name twice.
"""

import re

import pytest

from selfplay.methods import LOSSES, METHODS, PAIR_RULES, merged
from selfplay.methods.base import Method

from conftest import REPO

# Names that are not a method's alone: `selfie` is also a judge (annotate.type), declared in
# selfplay/judging/registry.py, and a judge may be named there.
SHARED_WITH_JUDGES = {"selfie"}
JUDGE_REGISTRY = REPO / "selfplay" / "judging" / "registry.py"


def method_names() -> set[str]:
    return {method.name for method in METHODS} | set(LOSSES) | set(PAIR_RULES)


LITERAL = re.compile(r"""(['"])(\w+)\1""")
# a comparison or membership test, or a condition, anywhere on the line
BRANCH = re.compile(r"==|!=|\bin\b|^\s*(if|elif|while|case|assert)\b|\bif\b.*\belse\b")


def branches_on_a_name(line: str, names: set[str]) -> str | None:
    """The method name `line` quotes in a comparison, membership test or condition, if any."""
    code = line.split(" #", 1)[0]
    if not BRANCH.search(code):
        return None
    return next((m.group(2) for m in LITERAL.finditer(code) if m.group(2) in names), None)


def test_the_detector_catches_comparisons_and_branches():
    names = {"drift", "tpo"}
    assert branches_on_a_name('    if recipe.pairs.type == "drift":', names) == "drift"
    assert branches_on_a_name("K=1 if recipe.pairs.type == 'drift' else k", names) == "drift"
    assert branches_on_a_name('    if loss in ("dpo", "tpo"):', names) == "tpo"
    assert branches_on_a_name('    elif "tpo" == loss:', names) == "tpo"
    assert branches_on_a_name('    case "drift":', names) == "drift"
    assert branches_on_a_name('    listed = rule.front(recipe, iteration)', names) is None
    assert branches_on_a_name('    type: Literal["drift"] = "drift"', names) is None  # a declaration, not a branch


def test_no_code_outside_the_method_modules_branches_on_a_method_name():
    names = method_names()
    found = []
    for path in sorted((REPO / "selfplay").rglob("*.py")):
        if (REPO / "selfplay" / "methods") in path.parents:
            continue
        checked = names - SHARED_WITH_JUDGES if path == JUDGE_REGISTRY else names
        for number, line in enumerate(path.read_text().splitlines(), 1):
            name = branches_on_a_name(line, checked)
            if name is not None:
                found.append(f"{path.relative_to(REPO)}:{number}: {name!r} in {line.strip()}")
    assert not found, "method names branched on outside selfplay/methods/:\n" + "\n".join(found)


def test_the_registries_merge_every_method_in_order():
    assert list(LOSSES) == [name for method in METHODS for name in method.losses]
    assert list(PAIR_RULES) == [name for method in METHODS for name in method.pair_rules]
    assert len({method.name for method in METHODS}) == len(METHODS)


def test_a_name_declared_by_two_methods_fails():
    first, second = (Method(name, losses={"dpo": LOSSES["dpo"]}) for name in ("dpo", "copy"))
    with pytest.raises(ValueError, match="losses name 'dpo' is declared by both methods 'dpo' and 'copy'"):
        merged((first, second), "losses")
