"""The contract between pair sources and losses, and the trainer's settings object.

- each pair source emits exactly the target columns it declares (methods.PAIR_RULES,
  seed_pairs.TARGET_COLUMNS), so `selfplay validate` can trust the declarations;
- a loss whose columns the configured pair source does not emit fails `selfplay validate` with one
  line naming train.loss and pairs.type; seed_training.loss is held to the labelled pairs' columns;
- TrainSettings is a frozen, picklable copy of a validated TrainConfig.
"""

import dataclasses
import json
import pickle

import numpy as np
import pytest

from selfplay.cli import main
from selfplay.methods import PAIR_RULES
from selfplay.recipe import TrainConfig
from selfplay.train.settings import TrainSettings

from conftest import REPO

QUICKSTART = REPO / "recipes" / "quickstart-cpu.yaml"
DRIFT = REPO / "recipes" / "drift-cpu.yaml"
SELFIE = REPO / "recipes" / "selfie-cpu.yaml"
# what every pair row has besides a builder's targets
PAIR_FIELDS = {"prompt_id", "prompt", "prompt_token_ids", "chosen", "rejected", "chosen_token_ids", "rejected_token_ids"}


@pytest.mark.parametrize("builder", sorted(name for name, rule in PAIR_RULES.items() if rule.build))
@pytest.mark.parametrize("with_scores", [False, True])
def test_each_pair_builder_emits_the_targets_it_declares(builder, with_scores):
    win_matrix = np.array([[0.5, 0.8, 0.9], [0.2, 0.5, 0.6], [0.1, 0.4, 0.5]])
    scores = np.array([3.0, 2.0, 1.0]) if with_scores else None
    rule = PAIR_RULES[builder]
    pairs = rule.build(win_matrix, scores)
    assert pairs
    for pair in pairs:
        assert set(rule.responses) <= set(pair)
        assert sorted(set(pair) - set(rule.responses)) == sorted(rule.targets)


def test_drift_and_seed_pairs_emit_no_targets(tiny_policy, tmp_path):
    from transformers import AutoTokenizer

    from selfplay.methods.drift import drift_pairs
    from selfplay.train import seed_pairs

    records = [{"prompt": "Name a colour.", "dsat_response": "Blue.", "feedback": "Say more."}]
    samples = [{"prompt_id": 0, "text": "Blue, like the sky.", "token_ids": [5, 6, 7]}]
    [row] = drift_pairs(records, samples, {0: [1, 2]}, lambda text: [9])
    assert set(row) - PAIR_FIELDS == set(PAIR_RULES["drift"].targets) == set()

    path = tmp_path / "seed.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}) + "\n")
    [row] = seed_pairs.load_seed_pairs(str(path), AutoTokenizer.from_pretrained(tiny_policy))
    assert set(row) - PAIR_FIELDS == set(seed_pairs.TARGET_COLUMNS) == set()


@pytest.mark.parametrize("recipe, overrides, needles", [
    (DRIFT, ["train.loss=sppo", "train.loss_options={}"],
     ["train.loss 'sppo'", "pairs.type 'drift'", "chosen_win_rate, rejected_win_rate"]),
    (DRIFT, ["train.loss=sppo_single", "train.loss_options={}"],
     ["train.loss 'sppo_single'", "pairs.type 'drift'", "chosen_beats_rejected"]),
    (SELFIE, ["seed_training.loss=sppo_single"], ["seed_training.loss", "chosen_beats_rejected"]),
    (SELFIE, ["seed_training.loss=dpo_typo"], ["seed_training.loss", "must be one of asft, dpo, drift, ipo, selfie, sppo_hard"]),
])
def test_a_loss_the_pairs_cannot_feed_fails_validate_in_one_line(capsys, recipe, overrides, needles):
    assert main(["validate", str(recipe), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(needle in err for needle in needles), err


@pytest.mark.parametrize("recipe, overrides", [
    (QUICKSTART, ["pairs.type=best_worst", "train.loss=sppo_single"]),
    (QUICKSTART, ["pairs.type=curriculum", "train.loss=sppo"]),
    (DRIFT, ["train.loss=ipo", "train.loss_options={}"]),  # needs no columns: any pair source feeds it
    (DRIFT, ["train.loss=sppo_hard", "train.loss_options={}"]),
    (SELFIE, ["seed_training.loss=ipo"]),
])
def test_a_loss_the_pairs_can_feed_validates(capsys, recipe, overrides):
    assert main(["validate", str(recipe), *overrides]) == 0, capsys.readouterr().err


def test_train_settings_are_a_frozen_picklable_copy_of_the_config():
    config = TrainConfig(loss="dpo", beta=0.2, loss_options={"label_smoothing": 0.1}, micro_batch_size=2,
                         global_batch_size=4, zero_stage=3)
    settings = TrainSettings.of(config)
    assert settings.loss_options == (("label_smoothing", 0.1),)
    assert (settings.loss, settings.beta, settings.micro_batch_size, settings.zero_stage) == ("dpo", 0.2, 2, 3)
    assert {f.name for f in dataclasses.fields(TrainSettings)} <= set(TrainConfig.model_fields)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.beta = 1.0
    assert pickle.loads(pickle.dumps(settings)) == settings
