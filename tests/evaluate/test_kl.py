"""The KL estimate against the exact KL of small categorical policies.

Each "prompt" has its own policy pi and initial policy pi0: independent categorical
distributions over a vocabulary of 5 tokens at each of 4 positions, so a sequence's log-prob is
the sum of its tokens' log-probs and KL(pi || pi0) per prompt is exactly the sum over
positions of sum_v p(v) log(p(v) / q(v)).
"""

import numpy as np
import pytest

from selfplay.evaluate.kl import kl_estimate

VOCAB, POSITIONS = 5, 4


def _policies(rng, prompts):
    """(log pi, log pi0), each (prompts, POSITIONS, VOCAB); pi0 a perturbation of pi."""
    logits = rng.normal(size=(prompts, POSITIONS, VOCAB))
    shifted = logits + rng.normal(scale=0.6, size=logits.shape)
    log_softmax = lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))
    return log_softmax(logits), log_softmax(shifted)


def _exact_kl(log_p, log_q):
    return float((np.exp(log_p) * (log_p - log_q)).sum(axis=(1, 2)).mean())


def _sample(rng, log_p, log_q, per_prompt):
    """Sequence log-probs under both policies of `per_prompt` sequences per prompt drawn from pi."""
    prompts = log_p.shape[0]
    cdf = np.exp(log_p).cumsum(-1)  # (prompts, positions, vocab)
    u = rng.random((prompts, per_prompt, POSITIONS, 1))
    tokens = np.minimum((u > cdf[:, None]).sum(-1), VOCAB - 1)  # (prompts, per_prompt, positions)
    take = lambda table: np.take_along_axis(np.broadcast_to(table[:, None], (prompts, per_prompt, POSITIONS, VOCAB)),
                                            tokens[..., None], axis=-1)[..., 0].sum(-1)
    prompt_ids = np.repeat(np.arange(prompts), per_prompt)
    return take(log_p).ravel(), take(log_q).ravel(), prompt_ids


def test_matches_the_exact_kl_of_categorical_policies():
    rng = np.random.default_rng(0)
    log_p, log_q = _policies(rng, 60)
    exact = _exact_kl(log_p, log_q)
    estimate, low, high = kl_estimate(*_sample(rng, log_p, log_q, 8))
    assert low <= exact <= high
    assert estimate == pytest.approx(exact, abs=(high - low) / 2)
    # with many samples per prompt the estimate converges on the exact value of these prompts
    many, _, _ = kl_estimate(*_sample(rng, log_p, log_q, 400))
    assert many == pytest.approx(exact, rel=0.03)


def test_identical_policies_give_zero():
    rng = np.random.default_rng(1)
    log_p, _ = _policies(rng, 10)
    assert kl_estimate(*_sample(rng, log_p, log_p, 4)) == (0.0, 0.0, 0.0)


def test_interval_covers_the_true_kl_at_about_its_nominal_rate():
    """300 simulated evaluations, each of 60 fresh prompts (4 samples each): the 95% interval
    over prompts must cover the true KL, the mean over the distribution of prompts (here the
    exact KL of 100,000 prompts, standard error < 0.001), about 95% of the time (binomial sd 1.3%)."""
    rng = np.random.default_rng(2)
    truth = _exact_kl(*_policies(rng, 100_000))
    covered = 0
    for _ in range(300):
        log_p, log_q = _policies(rng, 60)
        _, low, high = kl_estimate(*_sample(rng, log_p, log_q, 4))
        covered += low <= truth <= high
    assert 0.90 <= covered / 300 <= 0.98, covered / 300


def test_bad_input():
    with pytest.raises(ValueError, match="equally long"):
        kl_estimate([0.0, 1.0], [0.0], [0, 0])
    with pytest.raises(ValueError, match="not finite"):
        kl_estimate([0.0], [-np.inf], [0])
