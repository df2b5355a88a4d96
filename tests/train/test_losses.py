"""Preference losses against hand-computed values, and against TRL 1.16 where TRL has the loss.

Every hand-checked test calls a loss the way the trainer does: `LOSSES[name].loss(...)` with the
micro-batch's log-probs, its pair columns, the chosen responses' token mask and the step's options
(for Selfie, from its per-step state).

Shared batch of two pairs (summed log-probs):
  pair 1: policy chosen -1.0, rejected -3.0; reference chosen -1.5, rejected -2.0
          -> a_w = 0.5, a_l = -1.0, z = a_w - a_l = 1.5
  pair 2: policy chosen -2.0, rejected -1.0; reference chosen -2.0, rejected -2.0
          -> a_w = 0.0, a_l = 1.0,  z = -1.0
Chosen responses: 1 and 4 tokens (after prompts of 1 and 2), so their mean token NLL is
  pair 1: 1.0/1 = 1.0;  pair 2: 2.0/4 = 0.5.
beta = 0.5 throughout (eta = 2, 1/(2 beta) = 1, beta*z = 0.75 and -0.5).
Reference numbers from the math module: softplus(x) = log(1 + e^x) = -log sigmoid(-x)
  softplus(-0.75) = 0.38687100611489994   softplus(0.75) = 1.1368710061148999
  softplus(0.5)   = 0.9740769841801067    softplus(-0.5) = 0.4740769841801067
"""

import pytest
import torch

from selfplay.methods import LOSSES
from selfplay.methods.dpo import dpo_loss
from selfplay.methods.drift import chosen_mean_nll
from selfplay.methods.selfie import SelfieState, SelfieThreshold, selfie_alpha, selfie_loss
from selfplay.methods.sppo import sppo_hard_loss, sppo_loss, sppo_single_loss
from selfplay.train.losses import LossSpec

BETA = 0.5
SP_M075, SP_075, SP_05, SP_M05 = 0.38687100611489994, 1.1368710061148999, 0.9740769841801067, 0.4740769841801067
# (B, T) masks of the chosen rows as the trainer slices them from its padded batch: prompt 0s, response 1s, pad 0s
CHOSEN_MASK = torch.tensor([[0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1]])


def batch():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)
    return t(-1.0, -2.0), t(-3.0, -1.0), t(-1.5, -2.0), t(-2.0, -2.0)


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


# every column any pair builder emits: a spec must pick out its own
ALL_COLUMNS = {"chosen_win_rate": f64(0.8, 0.7), "rejected_win_rate": f64(0.3, 0.2),
               "chosen_beats_rejected": f64(0.9, 0.6), "chosen_score": f64(5.0, 5.0), "rejected_score": f64(1.0, 1.0)}


def as_trained(name, columns=ALL_COLUMNS, options=None, logps=None):
    """The per-example loss exactly as the trainer computes it for a micro-batch."""
    chosen, rejected, reference_chosen, reference_rejected = logps or batch()
    return LOSSES[name].loss({"chosen": chosen, "rejected": rejected},
                             {"chosen": reference_chosen, "rejected": reference_rejected}, beta=BETA, columns=columns,
                             response_masks={"chosen": CHOSEN_MASK}, options=options or {})


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_sppo_loss():
    # targets eta*(Phat - 0.5): pair 1 (0.8, 0.3) -> (0.6, -0.4); pair 2 (0.7, 0.2) -> (0.4, -0.6)
    # pair 1: ((0.5-0.6)^2 + (-1.0+0.4)^2)/2 = (0.01+0.36)/2 = 0.185
    # pair 2: ((0.0-0.4)^2 + (1.0+0.6)^2)/2 = (0.16+2.56)/2 = 1.36
    close(as_trained("sppo"), [0.185, 1.36])
    # the columns it reads are the win rates, nothing else
    close(as_trained("sppo", columns={"chosen_win_rate": f64(0.8, 0.7), "rejected_win_rate": f64(0.3, 0.2)}),
          [0.185, 1.36])


def test_sppo_single_loss():
    # P_wl = 0.9 -> target +-0.8: ((0.5-0.8)^2 + (-1.0+0.8)^2)/2 = (0.09+0.04)/2 = 0.065
    # P_wl = 0.6 -> target +-0.2: ((0.0-0.2)^2 + (1.0+0.2)^2)/2 = (0.04+1.44)/2 = 0.74
    p_wl = torch.tensor([0.9, 0.6], dtype=torch.float64)
    close(as_trained("sppo_single"), [0.065, 0.74])
    close(sppo_single_loss(*batch(), beta=BETA, chosen_beats_rejected=p_wl), [0.065, 0.74])
    # Same as SPPO with Phat_w = P_wl, Phat_l = 1 - P_wl.
    close(sppo_loss(*batch(), beta=BETA, chosen_win_rate=p_wl, rejected_win_rate=1 - p_wl), [0.065, 0.74])


def test_sppo_hard_loss_is_not_halved():
    # 0.5/beta = 1: pair 1 (0.5-1)^2 + (-1+1)^2 = 0.25; pair 2 (0-1)^2 + (1+1)^2 = 5
    close(as_trained("sppo_hard", columns={}), [0.25, 5.0])
    ones, zeros = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    close(sppo_hard_loss(*batch(), beta=BETA) / 2,
          sppo_loss(*batch(), beta=BETA, chosen_win_rate=ones, rejected_win_rate=zeros).tolist())


def test_dpo_loss():
    # -log sigmoid(0.75) = softplus(-0.75); -log sigmoid(-0.5) = softplus(0.5)
    close(as_trained("dpo", columns={}), [SP_M075, SP_05])
    # label smoothing 0.1: 0.9*softplus(-bz) + 0.1*softplus(bz)
    # pair 1: 0.9*0.386871006115 + 0.1*1.136871006115 = 0.461871006115
    # pair 2: 0.9*0.974076984180 + 0.1*0.474076984180 = 0.924076984180
    close(as_trained("dpo", options={"label_smoothing": 0.1}), [0.46187100611489995, 0.9240769841801066])


def test_ipo_loss():
    # summed: (1.5 - 1)^2 = 0.25; (-1 - 1)^2 = 4
    # (the chosen lengths (1, 4) of CHOSEN_MASK do not enter: IPO here is on summed log-probs)
    close(as_trained("ipo", columns={}), [0.25, 4.0])


def test_chosen_mean_nll_is_per_example():
    # -logp / |y_w|: 1.0/1 and 2.0/4 (not the pooled 3.0/5 = 0.6 for both)
    close(chosen_mean_nll({"chosen": batch()[0]}, {"chosen": CHOSEN_MASK}), [1.0, 0.5])
    # an empty response counts as one token, not a division by zero
    close(chosen_mean_nll({"chosen": f64(0.0)}, {"chosen": torch.zeros((1, 3), dtype=torch.long)}), [0.0])


def test_drift_loss():
    # DPO + 0.001 * per-example mean NLL (1.0, 0.5): 0.386871006115 + 0.001 and 0.974076984180 + 0.0005
    close(as_trained("drift", columns={}), [SP_M075 + 0.001, SP_05 + 0.0005])
    close(as_trained("drift", options={"nll_weight": 0.1}), [SP_M075 + 0.1, SP_05 + 0.05])


def test_selfie_loss():
    # tau 0.5: pair 1 beta*z = 0.75 > 0.5 -> c=1 -> plain DPO;
    # pair 2 beta*z = -0.5 -> c=0 -> 0.9*softplus(0.5) + 0.1*softplus(-0.5) = 0.924076984180
    close(as_trained("selfie", options={"alpha": 0.1, "threshold": 0.5}), [SP_M075, 0.9240769841801066])
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


def test_selfie_state_sets_alpha_and_tau_each_step():
    """What the trainer asks Selfie's state: the step's keywords, then the fields to log after it."""
    state = SelfieState(total_steps=100)
    first = state.step_options(0, {})
    assert first == {"alpha": 0.0, "threshold": 0.0}          # warm-up: plain DPO, tau 0
    close(as_trained("selfie", options=first), [SP_M075, SP_05])
    for step in range(50):  # records whose beta*(mean chosen reward - mean rejected reward) is 0.5*(step+1)
        options = state.step_options(step, {})
        logged = state.after_step({"chosen_reward": step + 1.0, "rejected_reward": 0.0}, BETA, options)
        assert logged["alpha"] == (0.0 if step < 20 else 0.1)
    # margins 0.5, 1.0, ..., 25: the 10th percentile at position 4.9 -> 0.5*5.9 = 2.95
    assert logged["threshold"] == pytest.approx(2.95)
    options = state.step_options(50, {})
    assert options == {"alpha": 0.1, "threshold": pytest.approx(2.95)}
    # tau 2.95 > beta*z for both pairs: c = 0, an alpha share of the flipped label
    close(as_trained("selfie", options=options), [0.9 * SP_M075 + 0.1 * SP_075, 0.9240769841801066])
    # a recipe's alpha wins over the schedule; the threshold is always the state's
    assert state.step_options(0, {"alpha": 0.3}) == {"alpha": 0.3, "threshold": pytest.approx(2.95)}
    restored = SelfieState(total_steps=100)
    restored.load_state_dict(state.state_dict())
    assert restored.step_options(50, {}) == options


def test_registry_and_specs():
    assert set(LOSSES) == {"sppo", "sppo_single", "sppo_hard", "dpo", "ipo", "drift", "selfie", "tpo", "asft"}
    assert LOSSES["sppo_hard"].fn is sppo_hard_loss
    assert {name: spec.pair_columns for name, spec in LOSSES.items() if spec.pair_columns} == {
        "sppo": ("chosen_win_rate", "rejected_win_rate"), "sppo_single": ("chosen_beats_rejected",)}
    assert {name for name, spec in LOSSES.items() if spec.state} == {"selfie"}
    assert {name: spec.options for name, spec in LOSSES.items() if spec.options} == {
        "dpo": ("label_smoothing",), "drift": ("nll_weight",), "selfie": ("alpha",),
        "tpo": ("alpha", "gamma", "length_normalized"), "asft": ("lam", "ce_coef")}
    assert LOSSES["tpo"].option_types["length_normalized"] is bool
    assert [name for name, spec in LOSSES.items() if not spec.needs_reference] == ["tpo", "asft"]
    assert {name: spec.responses for name, spec in LOSSES.items() if len(spec.responses) > 2} == {
        "tpo": ("chosen", "rejected", "gold")}
    # SPPO's losses also log the loss on the eta^2 scale
    record = {"loss": 2.0e4}
    assert [name for name, spec in LOSSES.items() if spec.step_metrics] == ["sppo", "sppo_single", "sppo_hard"]
    assert LOSSES["sppo"].step_metrics(record, 0.01) == {"loss_over_eta_sq": pytest.approx(2.0)}


def test_a_spec_naming_a_keyword_its_loss_lacks_fails_at_import():
    with pytest.raises(TypeError, match="chosen_winrate"):
        LossSpec(sppo_loss, default_beta=0.001, pair_columns=("chosen_winrate", "rejected_win_rate"))


# ---- against TRL 1.16 (DPOTrainer._compute_loss on the same tensors) -------------------------

try:
    from tests.train.trl_reference import trl_dpo_loss
except ImportError:  # pytest's default rootdir-less import mode puts this folder on sys.path
    from trl_reference import trl_dpo_loss


def make_batch(chosen_lengths=None, rejected_lengths=None, size=6):
    """Random per-token log-probs (lengths 1-6 unless given) and references near the policy (no loss saturates)."""
    generator = torch.Generator().manual_seed(0)
    lengths_c = torch.randint(1, 7, (size,), generator=generator)
    lengths_r = torch.randint(1, 7, (size,), generator=generator)
    lengths_c = torch.tensor(chosen_lengths) if chosen_lengths is not None else lengths_c
    lengths_r = torch.tensor(rejected_lengths) if rejected_lengths is not None else lengths_r
    tokens_c = [-torch.rand(int(n), generator=generator, dtype=torch.float64) * 3 for n in lengths_c]
    tokens_r = [-torch.rand(int(n), generator=generator, dtype=torch.float64) * 3 for n in lengths_r]
    policy_c = torch.stack([row.sum() for row in tokens_c])
    policy_r = torch.stack([row.sum() for row in tokens_r])
    ref_c = policy_c + torch.randn(size, generator=generator, dtype=torch.float64)
    ref_r = policy_r + torch.randn(size, generator=generator, dtype=torch.float64)
    # the chosen rows' response mask as the trainer pads it: a 2-token prompt, the response, padding
    mask = torch.zeros((size, 2 + int(lengths_c.max())), dtype=torch.long)
    for row, n in enumerate(lengths_c.tolist()):
        mask[row, 2:2 + n] = 1
    return dict(tokens_c=tokens_c, tokens_r=tokens_r, logps=(policy_c, policy_r, ref_c, ref_r), chosen_mask=mask)


@pytest.fixture(scope="module")
def random_batch():
    return make_batch()


def trained_on(batch, name, beta, options=None):
    chosen, rejected, reference_chosen, reference_rejected = batch["logps"]
    return LOSSES[name].loss({"chosen": chosen, "rejected": rejected},
                             {"chosen": reference_chosen, "rejected": reference_rejected}, beta=beta, columns={},
                             response_masks={"chosen": batch["chosen_mask"]}, options=options or {})


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


def test_ipo_is_trls_on_one_token_responses_only():
    """IPO here sums log-probs (docs/algorithms.md); TRL divides each log-ratio by its length. They agree when
    every response is one token, and not otherwise."""
    one_token = make_batch(chosen_lengths=[1] * 6, rejected_lengths=[1] * 6)
    torch.testing.assert_close(trained_on(one_token, "ipo", 0.1).mean(), _trl(one_token, "ipo", 0.1))
    longer = make_batch()
    assert not torch.isclose(trained_on(longer, "ipo", 0.1).mean(), _trl(longer, "ipo", 0.1))


@pytest.mark.parametrize("beta", [0.001, 0.1])
def test_sppo_hard_matches_trl(random_batch, beta):
    ours = sppo_hard_loss(*random_batch["logps"], beta=beta)
    torch.testing.assert_close(ours.mean(), _trl(random_batch, "sppo_hard", beta))


def test_drift_matches_trl_rpo_when_chosen_lengths_are_equal():
    """TRL 1.16 spells RPO (DRIFT's rpo_alpha=0.001) as loss_type ["sigmoid", "sft"] with weights
    [1, alpha]; its NLL pools tokens over the batch (sum of token NLLs / number of chosen tokens).
    The trainer's NLL is per example (NLL_i / |y_w,i|, the RPO paper's): the same when every chosen
    response has the same length."""
    equal = make_batch(chosen_lengths=[4] * 6)
    theirs = _trl(equal, ["sigmoid", "sft"], 0.1, loss_weights=[1.0, 0.001])
    torch.testing.assert_close(trained_on(equal, "drift", 0.1, {"nll_weight": 0.001}).mean(), theirs)


def test_drift_nll_is_per_example_not_pooled(random_batch):
    ours = trained_on(random_batch, "drift", 0.1, {"nll_weight": 0.5})
    per_example = torch.stack([-row.sum() / len(row) for row in random_batch["tokens_c"]])
    torch.testing.assert_close(ours, dpo_loss(*random_batch["logps"], beta=0.1) + 0.5 * per_example)
    pooled = -torch.cat(random_batch["tokens_c"]).sum() / sum(len(row) for row in random_batch["tokens_c"])
    assert not torch.isclose(ours.mean(), dpo_loss(*random_batch["logps"], beta=0.1).mean() + 0.5 * pooled)
