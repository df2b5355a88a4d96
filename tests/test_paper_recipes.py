"""Every recipe under recipes/ validates, and each paper recipe carries the papers' numbers.

The paper recipes name models and data that live on a GPU cluster, so they are checked with
`selfplay validate --schema-only` (every field and cross-field rule, no file lookups). The
expected values are a table here, each row citing docs/algorithms.md, "Published settings" (read from the
papers and their released code); a recipe edit that drifts from a paper fails its row. Each
paper recipe must also fit the hardware its header names: one node of 8x 80 GB GPUs.
"""

from pathlib import Path

import pytest
import yaml

from selfplay.cli import main
from selfplay.cluster import GIB, check_fit
from selfplay.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ALL_RECIPES = sorted(p for p in RECIPES.rglob("*.yaml") if "data" not in p.relative_to(RECIPES).parts)
PAPER = RECIPES / "paper"

# docs/algorithms.md, "SPPO" (Wu et al. 2024; uclaml/SPPO): K=5, temperature 0.7, top_p 0.9, max 2048
# tokens, PairRM with the released code's aggregated scores, best vs worst with Phat targets,
# beta 0.001, lr 5e-7, RMSprop, linear schedule, warmup 0.1, global batch 64, bf16, ZeRO-3,
# max_length 1024, max_prompt_length 512, 1 epoch (released scripts), reference pi_t, 3 iterations
# of about 20k prompts.
SPPO = {"iterations": 3, "prompts.per_iteration": 20000,
        "generate.samples_per_prompt": 5, "generate.temperature": 0.7, "generate.top_p": 0.9,
        "generate.max_tokens": 2048, "annotate.type": "pairrm", "annotate.win_matrix": "aggregated",
        "pairs.type": "sppo", "train.loss": "sppo", "train.beta": 0.001, "train.learning_rate": 5e-7,
        "train.optimizer": "rmsprop", "train.scheduler": "linear", "train.warmup_ratio": 0.1,
        "train.global_batch_size": 64, "train.precision": "bf16", "train.zero_stage": 3,
        "train.max_length": 1024, "train.max_prompt_length": 512, "train.epochs": 1,
        "train.reference": "previous", "policy.dtype": "bfloat16"}

EXPECTED = {
    # SPPO's three models (docs/algorithms.md, "SPPO": the headline models)
    "sppo-mistral-7b.yaml": {**SPPO, "policy.path": "Mistral-7B-Instruct-v0.2"},
    "sppo-llama3-8b.yaml": {**SPPO, "policy.path": "Meta-Llama-3-8B-Instruct"},
    "sppo-gemma2-9b.yaml": {**SPPO, "policy.path": "gemma-2-9b-it"},
    # docs/algorithms.md, "Iterative DPO (RLHFlow Online-RLHF)": K=8 at temperature 1.0, a reward model,
    # chosen = max, rejected = min, DPO sigmoid beta 0.1 with label smoothing 0.1, the paper's
    # fixed pi_0 reference.
    "iterative-dpo-llama3-8b.yaml": {
        "generate.samples_per_prompt": 8, "generate.temperature": 1.0, "annotate.type": "reward_model",
        "pairs.type": "best_worst", "train.loss": "dpo", "train.beta": 0.1,
        "train.loss_options.label_smoothing": 0.1, "train.reference": "initial", "policy.path": "LLaMA3-SFT"},
    # docs/algorithms.md, "DRIFT" (cacayaya/DRIFT): seed DPO 3 epochs; pairs = fresh sample vs real DSAT
    # turn; DPO beta 0.1 + 0.001 NLL; reference pi_t; lr 5e-7, RMSprop, 1 epoch per iteration.
    "drift-qwen2.5-7b.yaml": {
        "seed_training.loss": "dpo", "seed_training.epochs": 3, "pairs.type": "drift", "train.loss": "drift",
        "train.beta": 0.1, "train.loss_options.nll_weight": 0.001, "train.reference": "previous",
        "train.learning_rate": 5e-7, "train.optimizer": "rmsprop", "train.epochs": 1,
        "policy.path": "Qwen2.5-7B-Instruct"},
    # docs/algorithms.md, "Selfie / SPA" (kingdy2002/SPA): seed DPO; K=2 at temperature 0.7; the policy
    # judges itself against the FIXED SFT reference (annotate.reference unset = the initial policy);
    # argmax / argmin; noise-aware loss with beta 0.1 and the trainer's alpha schedule (no fixed
    # alpha); reference pi_t; lr 5e-7, cosine, 1 epoch; 2 iterations, the first of 8k prompts.
    "selfie-7b.yaml": {
        "seed_training.loss": "dpo", "generate.samples_per_prompt": 2, "generate.temperature": 0.7,
        "annotate.type": "selfie", "annotate.reference": None, "pairs.type": "best_worst",
        "train.loss": "selfie", "train.beta": 0.1, "train.loss_options": {}, "train.reference": "previous",
        "train.learning_rate": 5e-7, "train.scheduler": "cosine", "train.epochs": 1, "iterations": 2,
        "prompts.per_iteration": 8000},
}

# One node of 8x 80 GB GPUs as Ray reports it (a typical DGX: 96+ cores, 1-2 TB of memory).
NODE_8X80GB = {"CPU": 96.0, "GPU": 8.0, "memory": 1500.0 * GIB, "accelerator_type:H100": 1.0}


def value_at(recipe, dotted: str):
    node = recipe
    for key in dotted.split("."):
        node = node[key] if isinstance(node, dict) else getattr(node, key)
    return node


@pytest.mark.parametrize("path", ALL_RECIPES, ids=[str(p.relative_to(RECIPES)) for p in ALL_RECIPES])
def test_every_recipe_validates(path, capsys):
    """Schema and cross-field rules for all; the CPU recipes' data files resolve too."""
    assert main(["validate", "--schema-only", str(path)]) == 0
    assert "schema ok" in capsys.readouterr().out
    if path.parent != PAPER:
        load_recipe(path)


def test_every_paper_setting_has_a_recipe():
    assert sorted(p.name for p in PAPER.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_hyperparameters(name):
    recipe = load_recipe(PAPER / name, check_paths=False)
    for key, expected in EXPECTED[name].items():
        got = value_at(recipe, key)
        if key == "policy.path":
            assert Path(got).name == expected, f"{name}: {key} = {got!r}, expected a folder named {expected!r}"
        else:
            assert got == expected, f"{name}: {key} = {got!r}, the paper's value is {expected!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_recipe_fits_one_8x80gb_node(name):
    recipe = load_recipe(PAPER / name, check_paths=False)
    check_fit(recipe, {"total": dict(NODE_8X80GB), "nodes": [dict(NODE_8X80GB)]})
    assert recipe.generate.num_gpus_per_replica >= 1 and recipe.train.num_gpus_per_rank >= 1  # on GPUs, not CPU
    # engines and judges hold one GPU each: together at most the node, so they stay loaded between
    # the generation and judge stages and only give their GPUs to the training ranks
    judges = sum(j.num_gpus for j in (recipe.annotate, recipe.evaluate.judge) if j is not None)
    assert recipe.generate.replicas * recipe.generate.num_gpus_per_replica + judges <= NODE_8X80GB["GPU"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_recipe_header(name):
    """The header names the paper's code, the hardware and the exact launch command."""
    text = (PAPER / name).read_text()
    header = text.split("\nname:", 1)[0]
    assert f"selfplay run recipes/paper/{name} --ray-address auto" in header
    assert "8x 80 GB GPUs" in header and "code:" in header
    assert yaml.safe_load(text)["name"] == name.removesuffix(".yaml")


def test_full_validate_names_the_missing_files(capsys):
    """Without --schema-only, validate looks for the files: here they are on no disk."""
    assert main(["validate", str(PAPER / "sppo-mistral-7b.yaml")]) == 2
    assert "prompts.path: file or folder not found: /data/ultrafeedback_prompts.parquet" in capsys.readouterr().err
