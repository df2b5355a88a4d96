"""The judge registry and the recipe's union of per-judge configs (issue 11 item 3): each type
parses to its own config class, a field of another judge is a one-line error naming it, judges
declare what they need, and make_judge builds what the registry says."""

import pytest
from pydantic import TypeAdapter, ValidationError

from selfplay.judging.registry import (
    JUDGES,
    FunctionJudgeConfig,
    JudgeConfig,
    PairRMJudgeConfig,
    RewardModelJudgeConfig,
    SelfieJudgeConfig,
    make_judge,
)
from selfplay.recipe import RecipeError, parse_recipe, recipe_to_yaml

SCORE = "selfplay.judges:letter_e_count"
# The smallest valid section of each judge.
GOOD = {
    "function": {"type": "function", "function": SCORE},
    "pairrm": {"type": "pairrm", "path": "tiny:pairrm"},
    "reward_model": {"type": "reward_model", "path": "tiny:reward"},
    "selfie": {"type": "selfie"},
    "llm_judge": {"type": "llm_judge", "path": "tiny:llama"},
}
# A field each judge does not have, but another judge does.
FOREIGN = {"function": ("path", "tiny:pairrm"), "pairrm": ("function", SCORE),
           "reward_model": ("backend", "llm-blender"), "selfie": ("path", "tiny:reward"),
           "llm_judge": ("function", SCORE)}


def recipe_with(prompts_file, **sections):
    return parse_recipe({"prompts": {"path": str(prompts_file)}, **sections})


def one_line_error(prompts_file, **sections) -> str:
    with pytest.raises(RecipeError) as caught:
        recipe_with(prompts_file, **sections)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def test_every_registered_judge_has_a_complete_entry():
    assert set(GOOD) == set(JUDGES)  # a new judge gets its cases here too
    for name, kind in JUDGES.items():
        assert kind.config.model_fields["type"].default == name
        assert callable(kind.factory)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_each_type_parses_to_its_own_config_in_both_sections(prompts_file, name):
    recipe = recipe_with(prompts_file, annotate=GOOD[name], evaluate={"judge": GOOD[name]})
    assert type(recipe.annotate) is JUDGES[name].config
    assert type(recipe.evaluate.judge) is JUDGES[name].config
    # the frozen recipe (run.json, recipe.yaml) parses back to the same judge
    import yaml

    again = parse_recipe(yaml.safe_load(recipe_to_yaml(recipe)))
    assert again.annotate == recipe.annotate and again.evaluate.judge == recipe.evaluate.judge


def test_a_section_without_type_is_the_function_judge_and_the_default_is_letter_e(prompts_file):
    assert type(recipe_with(prompts_file, annotate={"function": SCORE}).annotate) is FunctionJudgeConfig
    default = recipe_with(prompts_file).annotate
    assert type(default) is FunctionJudgeConfig and default.function == SCORE


@pytest.mark.parametrize("name", sorted(GOOD))
def test_a_field_of_another_judge_is_one_line_naming_it(prompts_file, name):
    field, value = FOREIGN[name]
    message = one_line_error(prompts_file, annotate={**GOOD[name], field: value})
    assert message.startswith(f"annotate.{field}: not a field of the {name} judge (its fields: "), message
    assert f"set annotate.{field}=null to drop it" in message
    for own in JUDGES[name].config.model_fields:
        assert own in message
    message = one_line_error(prompts_file, evaluate={"judge": {**GOOD[name], field: value}})
    assert message.startswith(f"evaluate.judge.{field}: not a field of the {name} judge"), message


@pytest.mark.parametrize("name", sorted(GOOD))
def test_a_misspelt_field_is_one_line_without_the_null_advice(prompts_file, name):
    message = one_line_error(prompts_file, annotate={**GOOD[name], "tempreature": 1.0})
    assert message.startswith(f"annotate.tempreature: not a field of the {name} judge"), message
    assert "null" not in message


@pytest.mark.parametrize("section, expected", [
    ({"type": "magic"}, "annotate.type: must be one of function, pairrm, reward_model, selfie, llm_judge, got 'magic'"),
    ("pairrm", "annotate: must be a section with a type (function, pairrm, reward_model, selfie, llm_judge), got 'pairrm'"),
    ({"type": "pairrm"}, "annotate.path: required field is missing (the pairrm judge needs it)"),
    ({"type": "reward_model", "path": "x", "batch_tokens": 0}, "annotate.batch_tokens: Input should be greater than 0"),
    ({"type": "function"}, "annotate.function: required field is missing (the function judge needs it)"),
    ({"function": "selfplay.judges:nope"}, "annotate.function: 'selfplay.judges:nope': 'selfplay.judges' has no callable"),
    ({"type": "selfie", "temperature": 0}, "annotate.temperature: must be 'auto' or a finite number > 0, got 0"),
    ({"type": "pairrm", "path": "x", "backend": "other"}, "annotate.backend: Input should be 'native' or 'llm-blender'"),
])
def test_bad_sections_are_one_line(prompts_file, section, expected):
    assert one_line_error(prompts_file, annotate=section).startswith(expected)


def test_an_unset_or_default_field_of_another_judge_is_dropped(prompts_file):
    """`annotate.function=null` switches a recipe's judge by override; a recipe frozen by the flat
    schema (every judge's fields, the others' at their defaults) still parses to the same judge."""
    switched = recipe_with(prompts_file, annotate={"type": "pairrm", "path": "tiny:pairrm", "function": None}).annotate
    assert switched == PairRMJudgeConfig(path="tiny:pairrm")
    flat = {"type": "function", "function": SCORE, "path": None, "backend": "native", "reference": None,
            "win_matrix": "direct", "temperature": 2.0, "timeout_seconds": 60.0, "batch_tokens": 8192, "num_gpus": 0.0}
    assert recipe_with(prompts_file, annotate=flat).annotate == FunctionJudgeConfig(
        function=SCORE, win_matrix="direct", temperature=2.0, timeout_seconds=60.0)
    # a value that would change another judge is still an error
    for field, value in (("num_gpus", 1.0), ("batch_tokens", 4096), ("backend", "llm-blender")):
        assert one_line_error(prompts_file, annotate={**flat, field: value}).startswith(
            f"annotate.{field}: not a field of the function judge")


def test_judges_declare_what_they_need():
    from selfplay.judging.function import FunctionJudge
    from selfplay.judging.llm_judge import LLMJudge
    from selfplay.judging.pairrm import PairRMJudge
    from selfplay.judging.reward_model import RewardModelJudge
    from selfplay.judging.selfie import SelfieJudge

    classes = {"function": FunctionJudge, "pairrm": PairRMJudge, "reward_model": RewardModelJudge, "selfie": SelfieJudge,
               "llm_judge": LLMJudge}
    assert set(classes) == set(JUDGES)
    assert {name for name, judge in classes.items() if judge.takes_token_ids} == {"selfie"}  # judge_groups reads it
    configs = {name: TypeAdapter(JudgeConfig).validate_python(section) for name, section in GOOD.items()}
    assert {name for name, config in configs.items() if config.judges_with_policy} == {"selfie"}
    # an LLM judge scores with the policy when its model is the policy (self-rewarding)
    assert TypeAdapter(JudgeConfig).validate_python({"type": "llm_judge", "path": "policy"}).judges_with_policy
    assert FunctionJudgeConfig(function=SCORE).num_gpus == 0.0  # runs beside the driver
    assert SelfieJudgeConfig(num_gpus=1).num_gpus == 1.0


def test_identity_extras_are_the_function_judges_source_digest(tmp_path, monkeypatch):
    import sys

    module = tmp_path / "my_judge_scores.py"
    module.write_text("def score(prompt, response):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_judge_scores", raising=False)
    config = FunctionJudgeConfig(function="my_judge_scores:score")
    first = config.identity()
    assert set(first) == {"function_source_sha256"}
    module.write_text("def score(prompt, response):\n    return 2.0\n")
    assert config.identity() != first
    for name in ("pairrm", "reward_model", "selfie"):
        assert TypeAdapter(JudgeConfig).validate_python(GOOD[name]).identity() == {}


class FakeRemote:
    """Stands in for RemoteJudge: records what a model judge's actor would be built with."""

    def __init__(self, cls, args, num_gpus=0.0, timeout=None, replicas=1):
        self.cls, self.args, self.num_gpus, self.timeout, self.replicas = cls, args, num_gpus, timeout, replicas


@pytest.fixture
def fake_remote(monkeypatch):
    import selfplay.judging.calls as stage

    monkeypatch.setattr(stage, "RemoteJudge", FakeRemote)


def test_make_judge_builds_each_model_judge_as_before(fake_remote, tmp_path):
    from selfplay.judging.pairrm import PairRMJudge
    from selfplay.judging.reward_model import RewardModelJudge
    from selfplay.judging.selfie import SelfieJudge

    folder = str(tmp_path)
    judge = make_judge(PairRMJudgeConfig(path=folder, backend="llm-blender", batch_tokens=512, num_gpus=1,
                                         timeout_seconds=30), "policy", 0)
    assert judge.cls is PairRMJudge and judge.num_gpus == 1.0 and judge.timeout == 30.0
    assert judge.args == {"path": folder, "backend": "llm-blender", "batch_tokens": 512, "device": "cuda"}
    judge = make_judge(RewardModelJudgeConfig(path=folder), "policy", 0)
    assert judge.cls is RewardModelJudge and judge.args == {"path": folder, "batch_tokens": 8192, "device": "cpu"}
    # Selfie: the current policy, against the recipe's reference, else the initial policy, else the policy
    policy, initial = str(tmp_path / "policy"), str(tmp_path / "initial")
    judge = make_judge(SelfieJudgeConfig(), policy, 0, default_reference=initial)
    assert judge.cls is SelfieJudge
    assert judge.args == {"policy_path": policy, "reference_path": initial, "batch_tokens": 8192, "device": "cpu"}
    assert make_judge(SelfieJudgeConfig(reference=folder), policy, 0, initial).args["reference_path"] == folder
    assert make_judge(SelfieJudgeConfig(), policy, 0).args["reference_path"] == policy


@pytest.mark.parametrize("name", sorted(GOOD))
def test_a_judge_holds_an_actor_exactly_when_it_says_so(fake_remote, tmp_path, name):
    """cluster.py counts a CPU (and num_gpus) for each judge that `runs_in_actor`."""
    section = {**GOOD[name], **({"path": str(tmp_path)} if "path" in GOOD[name] else {})}
    config = TypeAdapter(JudgeConfig).validate_python(section)
    judge = make_judge(config, str(tmp_path), 0)
    assert isinstance(judge, FakeRemote) == config.runs_in_actor
    if not config.runs_in_actor:
        assert config.num_gpus == 0.0
        judge.shutdown()


def test_make_judge_builds_the_function_judge_in_the_driver():
    from selfplay.judging.function import FunctionJudge

    judge = make_judge(FunctionJudgeConfig(function=SCORE, timeout_seconds=5), "policy")
    try:
        assert isinstance(judge, FunctionJudge) and judge.spec == SCORE and judge.timeout == 5.0
        scores = judge.judge(["p"], [["eee", "e"]])[0].scores
        assert list(scores) == [3.0, 1.0]
    finally:
        judge.shutdown()


def test_make_judge_refuses_an_unregistered_type():
    with pytest.raises(ValueError, match="annotate.type 'nope' is not supported"):
        make_judge(FunctionJudgeConfig.model_construct(type="nope"), "policy")


def test_the_union_refuses_what_no_judge_takes():
    with pytest.raises(ValidationError):
        TypeAdapter(JudgeConfig).validate_python({"type": "selfie", "function": SCORE})
