"""TPO, TPO-L and ASFT (selfplay/methods/tpo.py, asft.py) on small tensors.

- each equals an independent re-typing of its formula in docs/algorithms.md (float64), computed
  through its `LossSpec` as the trainer calls it, so the batch inputs (mean token log-probs, the
  gold response's NLL) are derived from the same masks the trainer passes;
- TPO and TPO-L equal TRL 1.16's experimental TPOTrainer loss on the same logits when every gold
  response has the same length; TRL pools the gold tokens of the batch, ours is per example, so
  they differ otherwise (the test shows both);
- the `triple` pair rule picks gold = best, chosen = second, rejected = worst.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfplay.methods import LOSSES, PAIR_RULES
from selfplay.methods.tpo import triple_pairs

PROMPT = 2  # prompt tokens before each response
VOCAB = 11
RESPONSES = ("chosen", "rejected", "gold")


def random_batch(size=5, lengths=None, seed=0):
    """Per response: logits (B, T, V), token ids (B, T) and a response mask (B, T), T = PROMPT + longest.

    lengths: {response: [length per row]}; random lengths 1-6 where not given."""
    generator = torch.Generator().manual_seed(seed)
    lengths = lengths or {}
    batch = {}
    for name in RESPONSES:
        rows = lengths.get(name) or torch.randint(1, 7, (size,), generator=generator).tolist()
        width = PROMPT + max(rows)
        logits = torch.randn((size, width, VOCAB), generator=generator, dtype=torch.float64) * 2
        ids = torch.randint(0, VOCAB, (size, width), generator=generator)
        mask = torch.zeros((size, width), dtype=torch.long)
        for row, n in enumerate(rows):
            mask[row, PROMPT:PROMPT + n] = 1
        batch[name] = SimpleNamespace(logits=logits, ids=ids, mask=mask)
    return batch


def token_logps(part) -> torch.Tensor:
    """log p(token t | < t) at every position t >= 1, zero outside the response (B, T)."""
    logps = torch.zeros(part.ids.shape, dtype=torch.float64)
    logps[:, 1:] = torch.log_softmax(part.logits[:, :-1], -1).gather(-1, part.ids[:, 1:, None])[..., 0]
    return logps * part.mask


def ours(batch, name, beta, **options):
    policy = {response: token_logps(batch[response]).sum(-1) for response in RESPONSES}
    masks = {response: batch[response].mask for response in RESPONSES}
    return LOSSES[name].loss(policy, None, beta=beta, columns={}, response_masks=masks, options=options)


# ---- the formulas, typed again from docs/algorithms.md ---------------------------------------

def retyped_tpo(batch, beta, alpha, gamma, length_normalized):
    sums = {r: token_logps(batch[r]).sum(-1) for r in RESPONSES}
    lengths = {r: batch[r].mask.sum(-1).double() for r in RESPONSES}
    lp = {r: sums[r] / lengths[r] if length_normalized else sums[r] for r in ("chosen", "rejected")}
    delta = lp["chosen"] - lp["rejected"]
    pref = -torch.log(torch.sigmoid(beta * delta - (gamma if length_normalized else 0.0)))
    nll = -sums["gold"] / lengths["gold"]
    return pref + alpha * nll


def retyped_asft(batch, beta, lam, ce_coef):
    lp = {r: token_logps(batch[r]).sum(-1) / batch[r].mask.sum(-1) for r in ("chosen", "rejected")}

    def logodds(x):
        return x - torch.log(1 - torch.clamp(torch.exp(x), max=1 - 1e-7))

    return -ce_coef * lp["chosen"] + lam * (-torch.log(torch.sigmoid(beta * logodds(lp["chosen"])))
                                            - torch.log(torch.sigmoid(-beta * logodds(lp["rejected"]))))


@pytest.mark.parametrize("length_normalized", [False, True])
@pytest.mark.parametrize("beta,alpha,gamma", [(0.01, 1.0, 0.5), (0.5, 0.05, 1.5)])
def test_tpo_is_its_formula(length_normalized, beta, alpha, gamma):
    batch = random_batch()
    expected = retyped_tpo(batch, beta, alpha, gamma, length_normalized)
    got = ours(batch, "tpo", beta, alpha=alpha, gamma=gamma, length_normalized=length_normalized)
    torch.testing.assert_close(got, expected)


def test_plain_tpo_does_not_read_gamma():
    batch = random_batch()
    torch.testing.assert_close(ours(batch, "tpo", 0.1, gamma=0.0), ours(batch, "tpo", 0.1, gamma=3.0))


def test_tpo_defaults_are_trls():
    batch = random_batch()
    torch.testing.assert_close(ours(batch, "tpo", 0.01), retyped_tpo(batch, 0.01, 1.0, 0.5, False))
    torch.testing.assert_close(ours(batch, "tpo", 0.01, length_normalized=True),
                               retyped_tpo(batch, 0.01, 1.0, 0.5, True))


@pytest.mark.parametrize("beta,lam,ce_coef", [(1.0, 1.0, 1.0), (0.3, 0.1, 0.0), (2.0, 0.5, 1.0)])
def test_asft_is_its_formula(beta, lam, ce_coef):
    batch = random_batch(seed=1)
    torch.testing.assert_close(ours(batch, "asft", beta, lam=lam, ce_coef=ce_coef),
                               retyped_asft(batch, beta, lam, ce_coef))


def test_asft_at_beta_one_is_the_absolute_likelihood():
    """With beta = 1 the bracket is exactly -log p_w - log(1 - p_l), p = exp(mean token log-prob)."""
    batch = random_batch(seed=2)
    p = {r: torch.exp(token_logps(batch[r]).sum(-1) / batch[r].mask.sum(-1)) for r in ("chosen", "rejected")}
    bracket = -torch.log(p["chosen"]) - torch.log(1 - p["rejected"])
    torch.testing.assert_close(ours(batch, "asft", 1.0, lam=1.0, ce_coef=0.0), bracket)


def test_asft_stays_finite_for_a_response_the_policy_is_sure_of():
    sure = torch.zeros(2, dtype=torch.float64)  # mean log-prob 0: p = 1
    loss = LOSSES["asft"].fn(sure, sure, beta=1.0, chosen_mean_logps=sure, rejected_mean_logps=sure)
    assert torch.isfinite(loss).all() and loss[0] == pytest.approx(-math.log(1 - 1e-7) + math.log(1 + 1e7), rel=1e-6)


def test_reference_free_losses_declare_it():
    assert not LOSSES["tpo"].needs_reference and not LOSSES["asft"].needs_reference
    assert LOSSES["tpo"].responses == ("chosen", "rejected", "gold")


# ---- against TRL 1.16's experimental TPOTrainer._compute_loss on the same logits ---------------

def trl_tpo_loss(batch, loss_type: str, beta: float, alpha: float, gamma: float) -> torch.Tensor:
    """TRL's batch loss: the trainer built with object.__new__, the attributes `_compute_loss` reads
    set as TPOTrainer.__init__ sets them from a TPOConfig, and a model stub returning our logits for
    the batch laid out [chosen, rejected, gold] (TRL's layout for tpo_alpha != 0)."""
    import trl
    from trl.experimental.tpo import TPOTrainer

    assert trl.__version__ == "1.16.0", "re-read trl/experimental/tpo/tpo_trainer.py::_compute_loss before bumping"
    width = max(batch[r].ids.shape[1] for r in RESPONSES)

    def padded(tensor):
        return F.pad(tensor, (0, 0, 0, width - tensor.shape[1])) if tensor.dim() == 3 else \
            F.pad(tensor, (0, width - tensor.shape[1]))

    logits = torch.cat([padded(batch[r].logits) for r in RESPONSES])
    ids = torch.cat([padded(batch[r].ids) for r in RESPONSES])
    mask = torch.cat([padded(batch[r].mask) for r in RESPONSES])
    accelerator = SimpleNamespace(gather_for_metrics=lambda t: t, gather=lambda t: t)
    trainer = object.__new__(TPOTrainer)
    trainer.model = SimpleNamespace(training=True)
    trainer.loss_type, trainer.beta, trainer.tpo_alpha, trainer.tpo_l_gamma = loss_type, beta, alpha, gamma
    trainer.label_smoothing = 0.0
    trainer.accelerator = accelerator
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    model = lambda **kwargs: SimpleNamespace(logits=logits)  # noqa: E731
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": mask}
    return trainer._compute_loss(model, inputs, return_outputs=False)


@pytest.mark.parametrize("length_normalized,loss_type", [(False, "sigmoid"), (True, "tpo-l")])
def test_tpo_matches_trl_when_gold_lengths_are_equal(length_normalized, loss_type):
    pytest.importorskip("trl.experimental.tpo")
    batch = random_batch(lengths={"gold": [4] * 5})
    expected = trl_tpo_loss(batch, loss_type, beta=0.1, alpha=1.0, gamma=0.5)
    got = ours(batch, "tpo", 0.1, alpha=1.0, gamma=0.5, length_normalized=length_normalized)
    torch.testing.assert_close(got.mean(), expected)


def test_tpo_nll_is_per_example_where_trl_pools_the_gold_tokens():
    pytest.importorskip("trl.experimental.tpo")
    batch = random_batch(lengths={"gold": [1, 6, 2, 5, 3]})
    per_example = ours(batch, "tpo", 0.1, alpha=1.0).mean()
    assert not torch.isclose(per_example, trl_tpo_loss(batch, "sigmoid", beta=0.1, alpha=1.0, gamma=0.5))
    # TRL's NLL: every gold token of the batch weighted alike
    gold = token_logps(batch["gold"])
    pooled_nll = -gold.sum() / batch["gold"].mask.sum()
    preference = ours(batch, "tpo", 0.1, alpha=0.0).mean()
    torch.testing.assert_close(preference + pooled_nll, trl_tpo_loss(batch, "sigmoid", beta=0.1, alpha=1.0, gamma=0.5))


# ---- the triple pair rule ---------------------------------------------------------------------

def test_triple_is_gold_best_chosen_second_rejected_worst():
    scores = np.array([0.2, 0.9, -1.0, 0.5])
    win_matrix = np.full((4, 4), 0.5)
    (pair,) = triple_pairs(win_matrix, scores)
    assert (pair["gold"], pair["chosen"], pair["rejected"]) == (1, 3, 2)
    assert (pair["gold_score"], pair["chosen_score"], pair["rejected_score"]) == (0.9, 0.5, -1.0)


def test_triple_ranks_a_pairwise_judge_by_mean_win_rate():
    # sample 2 beats everyone, 0 beats 1, 1 loses to all: Phat = (0.5+0.7+0.1)/3, ...
    win_matrix = np.array([[0.5, 0.7, 0.1], [0.3, 0.5, 0.2], [0.9, 0.8, 0.5]])
    (pair,) = triple_pairs(win_matrix)
    assert (pair["gold"], pair["chosen"], pair["rejected"]) == (2, 0, 1)
    assert pair["chosen_beats_rejected"] == 0.7 and pair["gold_win_rate"] == pytest.approx(2.2 / 3)


def test_triple_drops_a_group_whose_chosen_and_rejected_tie_and_keeps_a_gold_tie():
    assert triple_pairs(np.full((3, 3), 0.5), np.array([1.0, 0.0, 0.0])) == []
    (pair,) = triple_pairs(np.full((3, 3), 0.5), np.array([1.0, 1.0, 0.0]))
    assert (pair["gold"], pair["chosen"], pair["rejected"]) == (0, 1, 2)


def test_triple_needs_three_samples():
    with pytest.raises(ValueError, match="at least 3 samples"):
        triple_pairs(np.full((2, 2), 0.5), np.array([1.0, 0.0]))
    assert PAIR_RULES["triple"].min_samples == 3
