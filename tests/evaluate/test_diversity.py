"""distinct-n and the length statistics of response_stats, by hand."""

import pyarrow as pa
import pytest

from selfplay.evaluate.diversity import distinct_n, mean_distinct_n
from selfplay.evaluate.stage import response_stats


def test_distinct_n_by_hand():
    # bigrams: (1,2) (2,3) | (1,2) (2,4) | none (too short)  ->  3 unique of 4
    assert distinct_n([[1, 2, 3], [1, 2, 4], [5]], 2) == 0.75
    # trigrams: (1,2,3) | (1,2,4)  ->  2 of 2
    assert distinct_n([[1, 2, 3], [1, 2, 4], [5]], 3) == 1.0
    # the same text K = 4 times, with no repeat inside it: 1 / K
    assert distinct_n([[7, 8, 9]] * 4, 2) == 0.25
    # a repeat inside one sample: (1,1) (1,1) (1,1) -> 1 of 3; n-grams never span two samples
    assert distinct_n([[1, 1, 1, 1]], 2) == pytest.approx(1 / 3)
    assert distinct_n([[1], [1]], 2) is None


def _table(rows):
    return pa.Table.from_pylist([{"prompt_id": pid, "prompt": "p", "sample_idx": k, "text": str(ids),
                                  "token_ids": ids, "finish_reason": "stop"} for pid, k, ids in rows])


def test_mean_over_prompts_leaves_out_prompts_without_ngrams():
    table = _table([(0, 0, [1, 2, 3]), (0, 1, [1, 2, 4]), (1, 0, [5, 6]), (1, 1, [5, 6]), (2, 0, [9])])
    # prompt 0: 0.75; prompt 1: (5,6) twice -> 0.5; prompt 2: no bigram, left out
    assert mean_distinct_n(table, 2) == pytest.approx(0.625)
    # trigrams: prompt 0 only -> 1.0
    assert mean_distinct_n(table, 3) == 1.0
    assert mean_distinct_n(_table([(0, 0, [1])]), 2) is None


def test_response_stats_adds_length_quantiles_and_diversity():
    # lengths 0..10 (prompt 0 holds 1, 3, 5, ...; prompt 1 the rest), so p10 = 1, p50 = 5, p90 = 9
    table = _table([(length % 2, length, list(range(length))) for length in range(11)])
    stats = response_stats(table)
    assert stats["mean_response_tokens"] == 5.0
    assert (stats["response_tokens_p10"], stats["response_tokens_p50"], stats["response_tokens_p90"]) == (1, 5, 9)
    # each sample is 0, 1, ..., L-1, so a prompt's unique n-grams are those of its longest sample:
    # bigrams: prompt 0 (L = 1..9) 8 of 0+2+4+6+8 = 20; prompt 1 (L = 0..10) 9 of 1+3+5+7+9 = 25
    assert stats["distinct_2"] == pytest.approx((8 / 20 + 9 / 25) / 2)
    # trigrams: prompt 0 7 of 1+3+5+7 = 16; prompt 1 8 of 2+4+6+8 = 20
    assert stats["distinct_3"] == pytest.approx((7 / 16 + 8 / 20) / 2)
    assert {"finished_fraction", "distinct_responses"} <= set(stats)
    assert "distinct_2" not in response_stats(_table([(0, 0, [1])]))
