"""Preference losses against hand-computed values, and against TRL 1.16 where TRL has the loss.

Shared batch of two pairs (summed log-probs):
  pair 1: policy chosen -1.0, rejected -3.0; reference chosen -1.5, rejected -2.0
          -> a_w = 0.5, a_l = -1.0, z = a_w - a_l = 1.5
  pair 2: policy chosen -2.0, rejected -1.0; reference chosen -2.0, rejected -2.0
          -> a_w = 0.0, a_l = 1.0,  z = -1.0
beta = 0.5 throughout (eta = 2, 1/(2 beta) = 1, beta*z = 0.75 and -0.5).
Reference numbers from the math module: softplus(x) = log(1 + e^x) = -log sigmoid(-x)
  softplus(-0.75) = 0.38687100611489994   softplus(0.75) = 1.1368710061148999
  softplus(0.5)   = 0.9740769841801067    softplus(-0.5) = 0.4740769841801067
"""

import pytest
import torch

from selfplay.train.losses import (
    LOSSES,
    SelfieThreshold,
    dpo_loss,
    drift_loss,
    ipo_loss,
    selfie_alpha,
    selfie_loss,
    sppo_hard_loss,
    sppo_loss,
    sppo_single_loss,
)

BETA = 0.5
SP_M075, SP_075, SP_05, SP_M05 = 0.38687100611489994, 1.1368710061148999, 0.9740769841801067, 0.4740769841801067


def batch():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)
    return t(-1.0, -2.0), t(-3.0, -1.0), t(-1.5, -2.0), t(-2.0, -2.0)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_sppo_loss():
    # targets eta*(Phat - 0.5): pair 1 (0.8, 0.3) -> (0.6, -0.4); pair 2 (0.7, 0.2) -> (0.4, -0.6)
    # pair 1: ((0.5-0.6)^2 + (-1.0+0.4)^2)/2 = (0.01+0.36)/2 = 0.185
    # pair 2: ((0.0-0.4)^2 + (1.0+0.6)^2)/2 = (0.16+2.56)/2 = 1.36
    loss = sppo_loss(*batch(), beta=BETA, chosen_win_rate=torch.tensor([0.8, 0.7], dtype=torch.float64),
                     rejected_win_rate=torch.tensor([0.3, 0.2], dtype=torch.float64))
    close(loss, [0.185, 1.36])


def test_sppo_single_loss():
    # P_wl = 0.9 -> target +-0.8: ((0.5-0.8)^2 + (-1.0+0.8)^2)/2 = (0.09+0.04)/2 = 0.065
    # P_wl = 0.6 -> target +-0.2: ((0.0-0.2)^2 + (1.0+0.2)^2)/2 = (0.04+1.44)/2 = 0.74
    p_wl = torch.tensor([0.9, 0.6], dtype=torch.float64)
    loss = sppo_single_loss(*batch(), beta=BETA, chosen_beats_rejected=p_wl)
    close(loss, [0.065, 0.74])
    # Same as SPPO with Phat_w = P_wl, Phat_l = 1 - P_wl.
    close(sppo_loss(*batch(), beta=BETA, chosen_win_rate=p_wl, rejected_win_rate=1 - p_wl), [0.065, 0.74])


def test_sppo_hard_loss_is_not_halved():
    # 0.5/beta = 1: pair 1 (0.5-1)^2 + (-1+1)^2 = 0.25; pair 2 (0-1)^2 + (1+1)^2 = 5
    close(sppo_hard_loss(*batch(), beta=BETA), [0.25, 5.0])
    ones, zeros = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    close(sppo_hard_loss(*batch(), beta=BETA) / 2,
          sppo_loss(*batch(), beta=BETA, chosen_win_rate=ones, rejected_win_rate=zeros).tolist())


def test_dpo_loss():
    # -log sigmoid(0.75) = softplus(-0.75); -log sigmoid(-0.5) = softplus(0.5)
    close(dpo_loss(*batch(), beta=BETA), [SP_M075, SP_05])
    # label smoothing 0.1: 0.9*softplus(-bz) + 0.1*softplus(bz)
    # pair 1: 0.9*0.386871006115 + 0.1*1.136871006115 = 0.461871006115
    # pair 2: 0.9*0.974076984180 + 0.1*0.474076984180 = 0.924076984180
    close(dpo_loss(*batch(), beta=BETA, label_smoothing=0.1), [0.46187100611489995, 0.9240769841801066])


def test_ipo_loss():
    # summed: (1.5 - 1)^2 = 0.25; (-1 - 1)^2 = 4
    close(ipo_loss(*batch(), beta=BETA), [0.25, 4.0])
    # TRL normalisation, chosen lengths (1, 2), rejected (4, 4):
    # pair 1: 0.5/1 - (-1.0)/4 = 0.75 -> (0.75-1)^2 = 0.0625; pair 2: 0/2 - 1/4 = -0.25 -> 1.5625
    lengths = dict(chosen_lengths=torch.tensor([1.0, 2.0], dtype=torch.float64),
                   rejected_lengths=torch.tensor([4.0, 4.0], dtype=torch.float64))
    close(ipo_loss(*batch(), beta=BETA, **lengths), [0.0625, 1.5625])
    with pytest.raises(ValueError):
        ipo_loss(*batch(), beta=BETA, chosen_lengths=lengths["chosen_lengths"])


def test_drift_loss():
    # DPO + 0.001 * NLL: 0.386871006115 + 0.002 and 0.974076984180 + 0.0005
    nll = torch.tensor([2.0, 0.5], dtype=torch.float64)
    close(drift_loss(*batch(), beta=BETA, chosen_nll=nll), [SP_M075 + 0.002, SP_05 + 0.0005])
    close(drift_loss(*batch(), beta=BETA, chosen_nll=nll, nll_weight=0.1), [SP_M075 + 0.2, SP_05 + 0.05])


def test_selfie_loss():
    # tau 0.5: pair 1 beta*z = 0.75 > 0.5 -> c=1 -> plain DPO;
    # pair 2 beta*z = -0.5 -> c=0 -> 0.9*softplus(0.5) + 0.1*softplus(-0.5) = 0.924076984180
    close(selfie_loss(*batch(), beta=BETA, alpha=0.1, threshold=0.5), [SP_M075, 0.9240769841801066])
    # mixed margins (0, 4): beta*z_mix = 0 -> c=0 for pair 1; 2 -> c=1 for pair 2
    mixed = torch.tensor([0.0, 4.0], dtype=torch.float64)
    close(selfie_loss(*batch(), beta=BETA, alpha=0.1, threshold=0.5, mixed_margin=mixed),
          [0.46187100611489995, SP_05])
    # the test is strict: beta*z == tau gives c = 0
    close(selfie_loss(*batch(), beta=BETA, alpha=0.1, threshold=0.75)[:1], [0.46187100611489995])
    # alpha = 0 (warm-up) is plain DPO whatever c
    close(selfie_loss(*batch(), beta=BETA, alpha=0.0, threshold=0.5), [SP_M075, SP_05])


def test_selfie_gradient_ignores_indicator():
    policy_chosen = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    args = (policy_chosen, torch.tensor([-3.0], dtype=torch.float64),
            torch.tensor([-1.5], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64))
    selfie_loss(*args, beta=BETA, alpha=0.1, threshold=0.5).sum().backward()
    # c = 1: d/dlw of softplus(-beta*z) = -beta*sigmoid(-0.75) = -0.5*0.32082130082460703
    torch.testing.assert_close(policy_chosen.grad, torch.tensor([-0.16041065041230351], dtype=torch.float64))


def test_selfie_alpha_schedule():
    assert [selfie_alpha(s, 10) for s in range(4)] == [0.0, 0.0, 0.1, 0.1]
    assert selfie_alpha(19, 100) == 0.0 and selfie_alpha(20, 100) == 0.1
    assert selfie_alpha(0, 10, warmup_fraction=0.0, alpha=0.3) == 0.3


def test_selfie_threshold():
    tau = SelfieThreshold()
    for margin in range(1, 50):
        assert tau.update(float(margin)) == 0.0  # fewer than 50 margins: tau = 0
    # 1..50: position 0.1*49 = 4.9 between the 5th (5) and 6th (6) values -> 5.9
    assert tau.update(50.0) == pytest.approx(5.9)
    # window slides to 2..51 -> 6.9
    assert tau.update(51.0) == pytest.approx(6.9)
    restored = SelfieThreshold(window=3)
    restored.load_state_dict(tau.state_dict())
    assert restored.value == pytest.approx(6.9) and restored.window == 50


def test_registry():
    assert set(LOSSES) == {"sppo", "sppo_single", "sppo_hard", "dpo", "ipo", "drift", "selfie"}
    assert LOSSES["sppo_hard"] is sppo_hard_loss


# ---- against TRL 1.16 (DPOTrainer._compute_loss on the same tensors) -------------------------

try:
    from tests.train.trl_reference import trl_dpo_loss
except ImportError:  # pytest's default rootdir-less import mode puts this folder on sys.path
    from trl_reference import trl_dpo_loss


@pytest.fixture(scope="module")
def random_batch():
    generator = torch.Generator().manual_seed(0)
    size = 6
    lengths_c = torch.randint(1, 7, (size,), generator=generator)
    lengths_r = torch.randint(1, 7, (size,), generator=generator)
    tokens_c = [-torch.rand(int(n), generator=generator, dtype=torch.float64) * 3 for n in lengths_c]
    tokens_r = [-torch.rand(int(n), generator=generator, dtype=torch.float64) * 3 for n in lengths_r]
    policy_c = torch.stack([row.sum() for row in tokens_c])
    policy_r = torch.stack([row.sum() for row in tokens_r])
    # references near the policy so no loss saturates
    ref_c = policy_c + torch.randn(size, generator=generator, dtype=torch.float64)
    ref_r = policy_r + torch.randn(size, generator=generator, dtype=torch.float64)
    return dict(tokens_c=tokens_c, tokens_r=tokens_r, logps=(policy_c, policy_r, ref_c, ref_r),
                lengths_c=lengths_c.to(torch.float64), lengths_r=lengths_r.to(torch.float64))


def _trl(batch, loss_type, beta, rows=slice(None), **kwargs):
    _, _, ref_c, ref_r = batch["logps"]
    return trl_dpo_loss(loss_type, beta=beta, chosen_token_logps=batch["tokens_c"][rows],
                        rejected_token_logps=batch["tokens_r"][rows], reference_chosen_logps=ref_c[rows],
                        reference_rejected_logps=ref_r[rows], **kwargs)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl_sigmoid(random_batch, beta):
    ours = dpo_loss(*random_batch["logps"], beta=beta)
    torch.testing.assert_close(ours.mean(), _trl(random_batch, "sigmoid", beta))


def test_trl_sigmoid_ignores_label_smoothing(random_batch):
    # TRL 1.16's "sigmoid" no longer applies label_smoothing (only robust/exo/aot read it): a cDPO run
    # through TRL's sigmoid would silently train plain DPO.
    plain = dpo_loss(*random_batch["logps"], beta=0.1).mean()
    torch.testing.assert_close(_trl(random_batch, "sigmoid", 0.1, label_smoothing=0.1), plain)


def test_conservative_dpo_matches_trl_aot_per_pair(random_batch):
    # TRL 1.16's only conservative-DPO form is inside "aot", which sorts the batch's margins; with a
    # single pair the sort is the identity and aot is exactly cDPO.
    ours = dpo_loss(*random_batch["logps"], beta=0.1, label_smoothing=0.1)
    theirs = torch.stack([_trl(random_batch, "aot", 0.1, rows=slice(i, i + 1), label_smoothing=0.1)
                          for i in range(len(ours))])
    torch.testing.assert_close(ours, theirs)


def test_ipo_matches_trl_with_lengths(random_batch):
    ours = ipo_loss(*random_batch["logps"], beta=0.1, chosen_lengths=random_batch["lengths_c"],
                    rejected_lengths=random_batch["lengths_r"])
    torch.testing.assert_close(ours.mean(), _trl(random_batch, "ipo", 0.1))
    # and the summed form (ALGORITHMS.md) differs once lengths are not all 1
    assert not torch.isclose(ipo_loss(*random_batch["logps"], beta=0.1).mean(), ours.mean())


@pytest.mark.parametrize("beta", [0.001, 0.1])
def test_sppo_hard_matches_trl(random_batch, beta):
    ours = sppo_hard_loss(*random_batch["logps"], beta=beta)
    torch.testing.assert_close(ours.mean(), _trl(random_batch, "sppo_hard", beta))


def test_drift_matches_trl_rpo(random_batch):
    # TRL 1.16 spells RPO (DRIFT's rpo_alpha=0.001) as loss_type ["sigmoid", "sft"] with weights
    # [1, alpha]; its NLL pools tokens over the batch: sum of token NLLs / number of chosen tokens.
    pooled_nll = -torch.cat(random_batch["tokens_c"]).sum() / random_batch["lengths_c"].sum()
    ours = drift_loss(*random_batch["logps"], beta=0.1, nll_weight=0.001,
                      chosen_nll=pooled_nll.expand(len(random_batch["tokens_c"])))
    theirs = _trl(random_batch, ["sigmoid", "sft"], 0.1, loss_weights=[1.0, 0.001])
    torch.testing.assert_close(ours.mean(), theirs)
