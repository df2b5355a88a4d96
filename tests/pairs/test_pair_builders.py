"""Pair builders on hand-checked win matrices.

P3 (K = 3), P[i, j] = P(i beats j):
    [[0.5, 0.8, 0.9],
     [0.2, 0.5, 0.6],
     [0.1, 0.4, 0.5]]
Phat = row means with the self term 0.5: (0.5+0.8+0.9)/3 = 2.2/3, (0.2+0.5+0.6)/3 = 1.3/3,
(0.1+0.4+0.5)/3 = 1/3. (Without the self term sample 0 would get 0.85.)
"""

import numpy as np
import pytest

from selfplay.judging.win_matrix import bradley_terry
from selfplay.methods import PAIR_RULES
from selfplay.methods.curriculum import curriculum_pairs
from selfplay.methods.dpo import best_worst_pairs
from selfplay.methods.sppo import sppo_pairs

P3 = np.array([[0.5, 0.8, 0.9],
               [0.2, 0.5, 0.6],
               [0.1, 0.4, 0.5]])
TIED = np.full((3, 3), 0.5)


def test_registry():
    assert PAIR_RULES["sppo"].build is sppo_pairs
    assert PAIR_RULES["best_worst"].build is best_worst_pairs
    assert PAIR_RULES["curriculum"].build is curriculum_pairs
    assert PAIR_RULES["drift"].build is None  # its own stages write the pairs


def test_sppo_pairs_self_term_included():
    [pair] = sppo_pairs(P3)
    assert (pair["chosen"], pair["rejected"]) == (0, 2)
    assert pair["chosen_win_rate"] == pytest.approx(2.2 / 3)
    assert pair["rejected_win_rate"] == pytest.approx(1 / 3)
    assert pair["chosen_beats_rejected"] == pytest.approx(0.9)


def test_sppo_pairs_drops_ties():
    assert sppo_pairs(TIED) == []


def test_sppo_pairs_follow_scores_through_bradley_terry():
    # Phat is monotone in the score under Bradley-Terry, so argmax/argmin score win.
    [pair] = sppo_pairs(bradley_terry(np.array([1.0, 3.0, -2.0, 0.5])))
    assert (pair["chosen"], pair["rejected"]) == (1, 2)


def test_best_worst_by_scores():
    scores = np.array([1.0, 3.0, -2.0, 0.5])
    [pair] = best_worst_pairs(bradley_terry(scores), scores)
    assert (pair["chosen"], pair["rejected"]) == (1, 2)
    assert (pair["chosen_score"], pair["rejected_score"]) == (3.0, -2.0)
    assert pair["chosen_beats_rejected"] == pytest.approx(0.9933071490757153)  # sigmoid(3 - (-2))


def test_best_worst_scores_take_precedence_over_matrix():
    [pair] = best_worst_pairs(P3, np.array([0.0, 1.0, 2.0]))
    assert (pair["chosen"], pair["rejected"]) == (2, 0)
    assert pair["chosen_beats_rejected"] == pytest.approx(0.1)  # P3[2, 0]


def test_best_worst_by_mean_win_rate():
    [pair] = best_worst_pairs(P3)
    assert (pair["chosen"], pair["rejected"]) == (0, 2)
    assert pair["chosen_score"] == pytest.approx(2.2 / 3) and pair["rejected_score"] == pytest.approx(1 / 3)


def test_best_worst_ties():
    assert best_worst_pairs(TIED) == []
    assert best_worst_pairs(TIED, np.array([2.0, 2.0, 2.0])) == []
    # ties for first or last place: the lowest index
    [pair] = best_worst_pairs(bradley_terry(np.array([3.0, 1.0, 3.0, 1.0])), np.array([3.0, 1.0, 3.0, 1.0]))
    assert (pair["chosen"], pair["rejected"]) == (0, 1)


def test_curriculum_easy_to_hard():
    # best = sample 1 (5.0); gaps: sample 2 -> 4, sample 0 -> 3, sample 3 -> 1
    scores = np.array([2.0, 5.0, 1.0, 4.0])
    pairs = curriculum_pairs(bradley_terry(scores), scores)
    assert [(p["chosen"], p["rejected"], p["rank"], p["gap"]) for p in pairs] == [
        (1, 2, 0, 4.0), (1, 0, 1, 3.0), (1, 3, 2, 1.0)]
    assert pairs[0]["chosen_beats_rejected"] == pytest.approx(0.9820137900379085)  # sigmoid(4)


def test_curriculum_ties():
    # sample 1 ties the best (0) and is dropped; equal gaps keep index order
    scores = np.array([5.0, 5.0, 1.0, 1.0])
    pairs = curriculum_pairs(bradley_terry(scores), scores)
    assert [(p["chosen"], p["rejected"], p["rank"], p["gap"]) for p in pairs] == [(0, 2, 0, 4.0), (0, 3, 1, 4.0)]
    assert curriculum_pairs(TIED) == []


def test_curriculum_by_mean_win_rate():
    # Phat = (2.2/3, 1.3/3, 1/3): gaps 0.4 (sample 2) then 0.3 (sample 1)
    pairs = curriculum_pairs(P3)
    assert [(p["chosen"], p["rejected"], p["rank"]) for p in pairs] == [(0, 2, 0), (0, 1, 1)]
    assert [p["gap"] for p in pairs] == pytest.approx([0.4, 0.3])
    assert pairs[1]["chosen_beats_rejected"] == pytest.approx(0.8)


def test_sppo_ranks_by_scores_when_the_judge_gives_them():
    # Under the `direct` rule Phat can disagree with llm-blender's scores; the released code
    # picks chosen/rejected by the scores, and the targets stay Phat.
    win_matrix = np.array([[0.5, 0.9, 0.1],
                           [0.1, 0.5, 0.8],
                           [0.9, 0.2, 0.5]])       # Phat = (0.5, 0.4667, 0.5333)
    by_phat = sppo_pairs(win_matrix)[0]
    assert (by_phat["chosen"], by_phat["rejected"]) == (2, 1)
    by_score = sppo_pairs(win_matrix, np.array([3.0, -1.0, 0.0]))[0]
    assert (by_score["chosen"], by_score["rejected"]) == (0, 1)
    assert by_score["chosen_win_rate"] == pytest.approx(0.5) and by_score["rejected_win_rate"] == pytest.approx(1.4 / 3)
    assert sppo_pairs(win_matrix, np.array([1.0, 1.0, 1.0])) == []   # all scores tie


def test_ultrafeedback_binarized_is_the_best_against_a_random_other_never_a_tie():
    from selfplay.methods.ultrafeedback import binarized_pairs

    scores = np.array([2.0, 4.5, 3.0, 4.5, 1.0])
    matrix = bradley_terry(scores)
    rejected = set()
    for shift in np.linspace(0, 1, 40):  # other scores, other draws; the same scores, the same draw
        moved = scores + shift
        pairs = binarized_pairs(bradley_terry(moved), moved)
        assert pairs[0]["chosen"] == 1 and pairs[0]["rejected"] in (0, 2, 4)  # 3 ties the best: never drawn
        assert pairs == binarized_pairs(bradley_terry(moved), moved)
        rejected.add(pairs[0]["rejected"])
    assert rejected == {0, 2, 4}  # every lower response gets drawn
    pair = binarized_pairs(matrix, scores)[0]
    assert pair["chosen_score"] == 4.5 and pair["rejected_score"] == scores[pair["rejected"]]
    assert binarized_pairs(bradley_terry(np.ones(3)), np.ones(3)) == []  # all tie: no pair
