import numpy as np

from selfplay.judging.base import Judge, Judgment
from selfplay.judging.calls import judge_groups


class LengthJudge(Judge):
    """Scores by length and refuses empty text, like the model judges."""

    def __init__(self, pairwise=False):
        self.pairwise = pairwise
        self.seen = []

    def judge(self, prompts, responses):
        judgments = []
        for group in responses:
            assert all(r.strip() for r in group) and len(group) >= 2
            self.seen.append(list(group))
            scores = np.array([float(len(r)) for r in group])
            judgments.append(Judgment(pairwise_logits=scores[:, None] - scores[None, :]) if self.pairwise
                             else Judgment(scores=scores))
        return judgments


def test_empty_responses_lose_to_every_nonempty_one_and_tie_each_other():
    judge = LengthJudge()
    groups = [(0, "p", ["abc", "", "a", ""]), (1, "q", ["", "xy"]), (2, "r", ["", ""]), (3, "s", ["aa", "b"])]
    judgments = judge_groups(judge, groups)
    assert judge.seen == [["abc", "a"], ["aa", "b"]]            # the judge never sees empty text
    matrix = judgments[0].win_matrix()
    assert matrix[0, 2] > 0.5 and matrix[0, 1] > 0.999 and matrix[2, 3] > 0.999
    assert matrix[1, 3] == 0.5 and matrix[1, 0] < 1e-3
    assert judgments[1].win_matrix()[1, 0] > 0.999                # a single non-empty response needs no judge
    assert np.all(judgments[2].win_matrix() == 0.5)
    np.testing.assert_allclose(judgments[3].scores, [2.0, 1.0])   # untouched when nothing is empty


def test_empty_responses_with_a_pairwise_judge():
    judgments = judge_groups(LengthJudge(pairwise=True), [(0, "p", ["abc", "", "a"])])
    for rule in ("aggregated", "direct"):
        matrix = judgments[0].win_matrix(rule)
        assert matrix[0, 1] > 0.999 and matrix[2, 1] > 0.999 and matrix[0, 2] > 0.5


class TokenIdJudge(LengthJudge):
    """Takes the sampled token ids, as the Selfie judge does, and scores by their count."""

    takes_token_ids = True

    def judge(self, prompts, responses, token_ids):
        self.seen.append(token_ids)
        return [Judgment(scores=np.array([float(len(ids)) for ids in group])) for _, group in token_ids]


def test_token_ids_follow_the_nonempty_responses_to_judges_that_take_them():
    groups = [(0, "p", ["abc", "", "a"]), (1, "q", ["", "x"]), (2, "r", ["aa", "b"])]
    token_ids = [([7, 8], [[1, 2, 3], [9], [4]]), ([7], [[9], [5]]), ([6], [[1, 1], [2]])]
    judge = TokenIdJudge()
    judgments = judge_groups(judge, groups, token_ids=token_ids, chunk=2)
    # chunk 2: the second chunk's group must get its own ids, not the first chunk's
    assert judge.seen == [[([7, 8], [[1, 2, 3], [4]])], [([6], [[1, 1], [2]])]]
    np.testing.assert_allclose(judgments[2].scores, [2.0, 1.0])
    assert judgments[0].win_matrix()[0, 1] > 0.999                # the empty response still loses
    # judges without takes_token_ids are called as before
    plain = LengthJudge()
    judge_groups(plain, groups, token_ids=token_ids)
    assert plain.seen == [["abc", "a"], ["aa", "b"]]
