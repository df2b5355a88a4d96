"""sequence_logps on the tiny llama against a hand computation: one unpadded forward per row,
log-softmax at each position, the response tokens' log-probs summed. Rows of different
lengths share padded batches, so padding must change nothing; an empty response scores 0."""

import numpy as np
import pytest
import torch

from selfplay.evaluate.sequence_logps import sequence_logps
from selfplay.models.causal_lm import load_causal_lm

PROMPTS = [[1, 17, 300, 42], [1, 5], [1, 99, 98, 97, 96, 95], [1, 7, 8]]
RESPONSES = [[11, 12, 13, 2], [600, 601, 602, 603, 604, 605, 606, 2], [], [2047, 3]]


def _by_hand(folder):
    model = load_causal_lm(folder, torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt, response in zip(PROMPTS, RESPONSES):
            ids = torch.tensor([prompt + response])
            log_probs = model(input_ids=ids).logits[0].log_softmax(-1)
            # the token at position t is predicted by the logits at position t - 1
            out.append(sum(float(log_probs[t - 1, ids[0, t]]) for t in range(len(prompt), ids.shape[1])))
    return np.array(out)


@pytest.mark.parametrize("batch_tokens", [10_000, 12])  # everything in one batch; about one row per batch
def test_matches_a_hand_computation(tiny_policy, batch_tokens):
    expected = _by_hand(tiny_policy)
    got = sequence_logps(tiny_policy, PROMPTS, RESPONSES, batch_tokens=batch_tokens, device="cpu")
    assert got.shape == (4,) and got[2] == 0.0 and np.all(got[[0, 1, 3]] < 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_rows_longer_than_the_context_are_refused(tiny_policy):
    with pytest.raises(ValueError, match="row 1 has 1030 tokens"):
        sequence_logps(tiny_policy, [[1], [1] * 30], [[2], [3] * 1000], device="cpu")
    with pytest.raises(ValueError, match="2 prompts for 1 responses"):
        sequence_logps(tiny_policy, [[1], [1]], [[2]], device="cpu")


def test_kl_metrics_of_a_policy_against_itself_is_zero(tiny_policy):
    import pyarrow as pa

    from selfplay.evaluate.kl import kl_metrics

    samples = pa.Table.from_pylist([{"prompt_id": k // 2, "prompt_token_ids": p, "token_ids": r}
                                    for k, (p, r) in enumerate(zip(PROMPTS, RESPONSES))])
    assert kl_metrics(samples, tiny_policy, tiny_policy, device="cpu") == {
        "kl_vs_initial": 0.0, "kl_vs_initial_ci_low": 0.0, "kl_vs_initial_ci_high": 0.0}
