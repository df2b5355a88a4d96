"""The train stage end to end: `train_policy` through Ray actors, DeepSpeed (gloo) and the tiny Llama.

- ZeRO-3 in 2 ranks gives the losses and weights of ZeRO-0 in 1 rank (same data, same config);
- a run resumed from a mid-training DeepSpeed checkpoint (ZeRO-0 in 1 rank, ZeRO-3 in 2) ends
  bit-identical to an unbroken one, with each step once in its history;
- DPO learns a tiny dataset (accuracy and reward margin grow); IPO, sppo_single and sppo_hard
  start at their loss at rewards 0 and train towards their targets;
- the reference log-probs come from the reference checkpoint passed in (reference: previous vs initial);
- the history logs the lr each step used;
- TPO and ASFT train with no reference model, from step 1 at their formula's value.

The tiny Llama has no dropout, so the RNG state a resume restores is not exercised here.
One Ray session for the module, and its training ranks are kept from one stage to the next as in
a run (KEPT_RANKS; each stage reads its policy from disk); runs are shared through
module-scoped fixtures.
"""

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from selfplay.recipe import TrainConfig

pytestmark = pytest.mark.slow

NUM_PAIRS = 16
# The same recipe for the ZeRO and resume comparisons: SPPO (the product's loss) with an lr large
# enough that RMSprop moves every weight by about 1e-3 a step (init std 0.02), so agreement is not
# trivially "nothing changed". 16 pairs / global batch 4 = 4 steps an epoch, 2 epochs = 8 steps;
# micro-batch 2 makes 1 rank accumulate 2 micro-steps per step and each of 2 ranks do 1.
BASE = dict(loss="sppo", beta=0.1, learning_rate=1e-4, optimizer="rmsprop", scheduler="linear", warmup_ratio=0.25,
            epochs=2, global_batch_size=4, micro_batch_size=2, max_length=48, max_prompt_length=24,
            max_grad_norm=1.0, checkpoint_every=2, seed=3)
TOTAL_STEPS = 2 * NUM_PAIRS // 4


def write_pairs(path: Path, tokenizer_dir: Path, num_pairs: int = NUM_PAIRS, seed: int = 0,
                min_len: int = 5, max_len: int = 20) -> Path:
    """A synthetic pairs.parquet: random non-special token ids of the tiny tokenizer, lengths
    min_len..max_len, SPPO win rates (chosen above 0.5, rejected below) and P(chosen beats rejected)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = set(tokenizer.all_special_ids)
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special])
    rng = np.random.default_rng(seed)

    def ids():
        return rng.choice(vocab, size=int(rng.integers(min_len, max_len + 1))).tolist()

    rows = [{"prompt_id": f"p{i}", "prompt_token_ids": ids(), "chosen_token_ids": ids(), "rejected_token_ids": ids(),
             "chosen_win_rate": float(rng.uniform(0.6, 0.9)), "rejected_win_rate": float(rng.uniform(0.1, 0.4))}
            for i in range(num_pairs)]
    for row in rows:  # in (0.6, 0.9), without drawing from rng (the other columns stay as they were)
        row["chosen_beats_rejected"] = 0.5 + (row["chosen_win_rate"] - row["rejected_win_rate"]) / 2
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def load_weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(folder) / "model.safetensors")


KEPT_RANKS = {}  # world size -> the module's TrainingRanks, kept from one call to the next as a run keeps them


def kept_ranks(world_size: int):
    from selfplay.train.ranks import TrainingRanks

    if world_size not in KEPT_RANKS:
        KEPT_RANKS[world_size] = TrainingRanks(world_size, 0.0)
    return KEPT_RANKS[world_size]


def train(policy, pairs, out_dir, checkpoint_dir=None, reference=None, **overrides) -> dict:
    """One train stage on the module's kept ranks, reading policy and reference from disk."""
    config = TrainConfig(**{**BASE, **overrides})
    return kept_ranks(config.world_size).train((str(policy), None), (str(reference or policy), None), str(pairs),
                                               str(out_dir), config, str(checkpoint_dir) if checkpoint_dir else None)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from selfplay.cluster import start_ray

    start_ray(None, 6)  # the kept ranks of 1 and of 2 (3 CPUs), and groups started for a comparison
    yield
    for ranks in KEPT_RANKS.values():
        ranks.shutdown()
    KEPT_RANKS.clear()
    ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trainer")


@pytest.fixture(scope="module")
def pairs(workdir, tiny_policy) -> Path:
    return write_pairs(workdir / "pairs.parquet", tiny_policy)


@pytest.fixture(scope="module")
def zero0_run(ray_session, tiny_policy, pairs, workdir):
    """The baseline: 1 rank, ZeRO-0, fp32, no checkpoints."""
    result = train(tiny_policy, pairs, workdir / "zero0")
    return result, load_weights(workdir / "zero0")


@pytest.fixture(scope="module")
def checkpointed_run(ray_session, tiny_policy, pairs, workdir):
    """The baseline recipe again, saving a DeepSpeed checkpoint every 2 steps."""
    result = train(tiny_policy, pairs, workdir / "checkpointed", checkpoint_dir=workdir / "checkpoints")
    return result, load_weights(workdir / "checkpointed"), workdir / "checkpoints"


@pytest.fixture(scope="module")
def zero3_run(ray_session, tiny_policy, pairs, workdir):
    """The same recipe in 2 ranks with ZeRO-3 (partitioned weights, gradients and RMSprop state),
    checkpointing every 2 steps."""
    result = train(tiny_policy, pairs, workdir / "zero3", checkpoint_dir=workdir / "checkpoints-zero3",
                   world_size=2, zero_stage=3)
    return result, load_weights(workdir / "zero3"), workdir / "checkpoints-zero3"


def test_history_has_one_record_per_step_with_the_lr_used(zero0_run):
    from selfplay.train.schedule import lr_multiplier

    result, _ = zero0_run
    history = result["history"]
    assert [h["step"] for h in history] == list(range(1, TOTAL_STEPS + 1))
    assert [h["epoch"] for h in history] == [0] * 4 + [1] * 4
    assert result["total_steps"] == TOTAL_STEPS and result["gradient_accumulation_steps"] == 2
    warmup = result["warmup_steps"]
    assert warmup == 2
    expected = [BASE["learning_rate"] * lr_multiplier(s, TOTAL_STEPS, warmup, "linear") for s in range(TOTAL_STEPS)]
    assert [h["lr"] for h in history] == pytest.approx(expected, rel=1e-12)
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in history)
    # SPPO logs the loss on the eta^2 scale too
    assert history[0]["loss_over_eta_sq"] == pytest.approx(history[0]["loss"] * BASE["beta"] ** 2)


def test_zero3_two_ranks_matches_zero0_one_rank(zero0_run, zero3_run, tiny_policy):
    """The product requirement: ZeRO-3 over 2 ranks gives the 1-rank ZeRO-0 losses.

    Both runs do the same fp32 arithmetic except the order of the gradient reductions (1 rank
    accumulates 2 micro-batches; 2 ranks reduce-scatter their halves over gloo) and ZeRO-3's
    flat partitions for the clip norm, so they differ by float32 rounding, compounded over 8
    steps. Measured on 2 cores: losses within 5e-6 relative, rewards (differences of summed
    log-probs of size ~100, float32 ulp ~1e-5) within 2e-5 absolute.
    Tolerances: 1e-4 relative on losses, 1e-4 absolute on rewards: 20x the rounding seen, and
    far below what a real fault does (a skipped or doubled step, a rank on the wrong shard, a
    wrong gradient scale or unsynchronised clipping all move step-2+ losses by >1e-2 relative).

    Weights: RMSprop divides each coordinate's gradient by its own running RMS, so a coordinate
    whose gradient nearly cancels turns rounding noise into an O(lr) difference: measured, one
    embedding element of 500k differs by 1e-4 (the whole training moved weights by 3-4e-3),
    every other element by < 4e-6. So compare each tensor's update: the difference of the two
    runs' weights is < 2e-3 of the distance travelled from the initial weights (measured
    <= 5e-4; a real fault gives O(0.1-1)), and no element differs by more than 5e-4 (half an
    RMSprop step at this lr).
    """
    baseline, baseline_weights = zero0_run
    result, weights, _ = zero3_run
    assert result["gradient_accumulation_steps"] == 1
    placement = result["rank_placement"]                       # recorded in the train manifest
    assert [p["rank"] for p in placement] == [0, 1] and len({p["pid"] for p in placement}) == 2
    assert [h["step"] for h in result["history"]] == list(range(1, TOTAL_STEPS + 1))
    for ours, reference in zip(result["history"], baseline["history"], strict=True):
        for key in ("loss", "chosen_reward", "rejected_reward"):
            tolerance = {"rel": 1e-4} if key == "loss" else {"abs": 1e-4}
            assert ours[key] == pytest.approx(reference[key], **tolerance), (ours["step"], key)
        assert ours["accuracy"] == reference["accuracy"] and ours["lr"] == pytest.approx(reference["lr"])

    initial = load_weights(tiny_policy)
    assert weights.keys() == baseline_weights.keys()
    moved = max((baseline_weights[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # training really changed the weights, so the comparison means something
    for key, value in weights.items():
        assert value.dtype == torch.float32 and value.shape == baseline_weights[key].shape
        travelled = (baseline_weights[key] - initial[key]).norm()
        assert (value - baseline_weights[key]).norm() < 2e-3 * travelled, key
        assert (value - baseline_weights[key]).abs().max() < 5e-4, key


def test_checkpointing_does_not_perturb_training(zero0_run, checkpointed_run):
    baseline, baseline_weights = zero0_run
    result, weights, checkpoints = checkpointed_run
    assert result["history"] == baseline["history"]
    assert all(torch.equal(weights[k], baseline_weights[k]) for k in baseline_weights)
    # every 2 steps, except after the last one (the HF folder is the final state)
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["step000002", "step000004", "step000006"]


@pytest.mark.parametrize(("zero_stage", "crash_after"), [(0, 3), (0, 5), (3, 3)])
def test_resume_from_mid_training_checkpoint_is_bit_identical(zero_stage, crash_after, request, tiny_policy, pairs,
                                                              workdir):
    """A crash during step `crash_after` leaves the checkpoints up to the step before it, and no
    output folder. Training again with the same checkpoint dir must load the latest checkpoint
    (weights, RMSprop state, LR schedule, RNG, data position, history) and finish bit-identical.

    crash_after=3 resumes mid-epoch (step 2 of 4); crash_after=5 resumes at the epoch boundary
    (step 4), where a resume must start the next epoch rather than run zero steps. ZeRO-3 in 2
    ranks: each rank reloads its own partition of the weights and optimizer state.
    """
    unbroken = {0: "checkpointed_run", 3: "zero3_run"}[zero_stage]
    baseline, baseline_weights, checkpoints = request.getfixturevalue(unbroken)
    kept = (crash_after - 1) // 2 * 2
    crashed = workdir / f"crashed-zero{zero_stage}-after-{crash_after}"
    shutil.copytree(checkpoints, crashed)
    for tag in crashed.iterdir():
        if tag.is_dir() and int(tag.name.removeprefix("step")) > kept:
            shutil.rmtree(tag)
    (crashed / "latest").write_text(f"step{kept:06d}")
    # Mark the history stored in the checkpoint: the resumed run must return these records
    # (proof that it loaded the checkpoint instead of silently retraining from step 1, which
    # would give the same numbers).
    # (ZeRO-0 writes mp_rank_00_model_states.pt; ZeRO-3 one zero_pp_rank_<r>_... per rank.)
    state_files = sorted((crashed / f"step{kept:06d}").glob("*model_states.pt"))
    assert len(state_files) == (2 if zero_stage == 3 else 1)
    for state_file in state_files:
        state = torch.load(state_file, weights_only=False)
        assert state["step"] == kept and [h["step"] for h in state["history"]] == list(range(1, kept + 1))
        for record in state["history"]:
            record["from_checkpoint"] = True
        torch.save(state, state_file)

    out = workdir / f"resumed-zero{zero_stage}-{crash_after}"
    assert not out.exists()
    overrides = {"world_size": 2, "zero_stage": 3} if zero_stage == 3 else {}
    result = train(tiny_policy, pairs, out, checkpoint_dir=crashed, **overrides)

    history = result["history"]
    assert [h["step"] for h in history] == list(range(1, TOTAL_STEPS + 1))  # each step once
    assert [h.get("from_checkpoint", False) for h in history] == [True] * kept + [False] * (TOTAL_STEPS - kept)
    assert [{k: v for k, v in h.items() if k != "from_checkpoint"} for h in history] == baseline["history"]
    weights = load_weights(out)
    assert weights.keys() == baseline_weights.keys()
    for key, value in weights.items():
        assert torch.equal(value, baseline_weights[key]), key
    # the resumed run saved the checkpoints after the one it resumed from, as an unbroken run does
    assert (crashed / "step000006").is_dir()


@pytest.fixture(scope="module")
def small_pairs(workdir, tiny_policy) -> Path:
    """8 pairs for the learning tests: one full-batch step per epoch."""
    return write_pairs(workdir / "small-pairs.parquet", tiny_policy, num_pairs=8, seed=1)


# One full-batch step per epoch for 8 epochs, an lr that moves the tiny model visibly each step.
LEARNING = dict(beta=0.1, learning_rate=1e-3, scheduler="constant", warmup_ratio=0.0, epochs=8, global_batch_size=8,
                micro_batch_size=4, checkpoint_every=0)


def test_dpo_learns_a_tiny_dataset(ray_session, tiny_policy, small_pairs, workdir):
    """8 pairs, one full-batch step per epoch for 8 epochs: the DPO margin and accuracy grow.

    History records are measured on the step's batch before its update, so step 1 is the
    reference itself (rewards 0, accuracy 0, loss log 2)."""
    result = train(tiny_policy, small_pairs, workdir / "dpo", loss="dpo", **LEARNING)
    history = result["history"]
    assert len(history) == 8
    margins = [h["chosen_reward"] - h["rejected_reward"] for h in history]
    first, last = history[0], history[-1]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and margins[0] == pytest.approx(0, abs=1e-4)
    assert first["accuracy"] == 0.0
    assert last["accuracy"] == 1.0 and last["loss"] < 0.5 * math.log(2)
    assert margins[-1] > 5.0 and margins[-1] > margins[len(margins) // 2] > margins[0]
    assert sum(b > a for a, b in zip(margins, margins[1:])) >= 6  # grows nearly every step


def _targets(loss: str, pairs_path: Path, beta: float) -> tuple[float, float]:
    """(mean loss at rewards 0, i.e. policy = reference; the mean margin the loss drives towards),
    from the loss's formula and the pairs' own columns (float64)."""
    eta = 1 / beta
    if loss == "ipo":        # (z - 1/(2 beta))^2: at z = 0, and its minimum z = 1/(2 beta)
        return (eta / 2) ** 2, eta / 2
    if loss == "sppo_hard":  # (a_w - eta/2)^2 + (a_l + eta/2)^2: a_w -> eta/2, a_l -> -eta/2
        return 2 * (eta / 2) ** 2, eta
    # sppo_single: ((a_w - t)^2 + (a_l + t)^2) / 2 with t = eta * (P_wl - 0.5), from chosen_beats_rejected
    t = eta * (np.array(pq.read_table(pairs_path).column("chosen_beats_rejected").to_pylist()) - 0.5)
    return float(np.mean(t ** 2)), float(2 * np.mean(t))


@pytest.mark.parametrize("loss", ["ipo", "sppo_single", "sppo_hard"])
def test_loss_trains_towards_its_target(loss, ray_session, tiny_policy, small_pairs, workdir):
    """The losses no recipe test trains, through the trainer as a recipe would call it.

    Step 1 is the reference itself, so its loss is the loss's value at rewards 0, computed here
    from the pairs (for sppo_single from its own column, P(chosen beats rejected)): the trainer fed
    the loss the right targets. Each step then moves the log-ratios towards the loss's minimum: the
    mean margin to IPO's 1/(2 beta) = 5, sppo_hard's 1/beta = 10, sppo_single's 2*mean(t).
    The squared losses overshoot at DPO's lr (RMSprop steps ~lr whatever the gradient), so 3e-5
    decaying linearly. Measured: final margins 5.00, 5.45 (target 5.46), 10.02; final losses
    2e-4 to 2e-3 of the first."""
    settings = {**LEARNING, "learning_rate": 3e-5, "scheduler": "linear"}
    result = train(tiny_policy, small_pairs, workdir / loss, loss=loss, **settings)
    history = result["history"]
    losses = [h["loss"] for h in history]
    margins = [h["chosen_reward"] - h["rejected_reward"] for h in history]
    first_loss, target_margin = _targets(loss, small_pairs, settings["beta"])
    assert len(history) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(first_loss, rel=1e-5) and margins[0] == pytest.approx(0, abs=1e-4)
    assert losses[-1] < 0.02 * losses[0]
    assert margins[-1] == pytest.approx(target_margin, rel=0.1) and history[-1]["accuracy"] == 1.0
    if loss.startswith("sppo"):  # each side moves towards its own target: chosen up, rejected down
        assert history[-1]["chosen_reward"] > 0 > history[-1]["rejected_reward"]
        assert history[0]["loss_over_eta_sq"] == pytest.approx(losses[0] * settings["beta"] ** 2)
    else:
        assert "loss_over_eta_sq" not in history[0]


def _mean_rewards(policy_dir, reference_dir, pairs_path):
    """Mean over all pairs of logp_policy - logp_reference for chosen and rejected (test-side)."""
    from transformers import AutoModelForCausalLM

    from selfplay.models.logps import pad_sequences, response_logps

    rows = pq.read_table(pairs_path).to_pylist()
    prompts = [r["prompt_token_ids"] for r in rows] * 2
    responses = [r["chosen_token_ids"] for r in rows] + [r["rejected_token_ids"] for r in rows]
    batch = pad_sequences(prompts, responses, 0, BASE["max_length"], BASE["max_prompt_length"])
    logps = {}
    for name, folder in (("policy", policy_dir), ("reference", reference_dir)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logps[name] = response_logps(model, *batch).double()
    rewards = logps["policy"] - logps["reference"]
    return rewards[:len(rows)].mean().item(), rewards[len(rows):].mean().item()


@pytest.mark.parametrize("rule", ["previous", "initial"])
def test_reference_log_probs_come_from_the_named_checkpoint(rule, zero0_run, tiny_policy, pairs, workdir):
    """Iteration 2: the policy is pi_1 (the baseline run's output); the driver passes pi_1 as the
    reference for `reference: previous` and pi_0 for `reference: initial`. One full-batch step:
    its record's rewards are logp_pi1 - logp_ref before any update, so 0 for previous and the
    test's own pi_1-vs-pi_0 log-ratio for initial."""
    pi_1 = workdir / "zero0"
    reference = {"previous": pi_1, "initial": tiny_policy}[rule]
    result = train(pi_1, pairs, workdir / f"iter2-{rule}", reference=reference, loss="dpo", global_batch_size=16,
                   micro_batch_size=4, epochs=1, checkpoint_every=0)
    step1 = result["history"][0]
    if rule == "previous":
        assert step1["chosen_reward"] == pytest.approx(0, abs=1e-4)
        assert step1["rejected_reward"] == pytest.approx(0, abs=1e-4)
    else:
        chosen, rejected = _mean_rewards(pi_1, tiny_policy, pairs)
        assert abs(chosen) > 0.1 and abs(rejected) > 0.1  # pi_1 really differs from pi_0 on this data
        assert step1["chosen_reward"] == pytest.approx(chosen, rel=1e-4, abs=1e-4)
        assert step1["rejected_reward"] == pytest.approx(rejected, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("options, rel_tolerance", [
    (dict(zero_stage=3, offload_optimizer=True), 1e-4),            # ZeRO-3 + optimizer offload, fp32
    (dict(zero_stage=2, offload_optimizer=True, precision="bf16", gradient_checkpointing=True), 5e-2),
], ids=["zero3-offload", "zero2-offload-bf16-gradient-checkpointing"])
def test_engine_options_train_like_the_baseline(options, rel_tolerance, zero0_run, tiny_policy, pairs, workdir):
    """Offload, bf16 and gradient checkpointing change where and how precisely the same math
    runs, not what it computes: per-step losses track the fp32 ZeRO-0 run."""
    name = "-".join(f"{k}={v}" for k, v in options.items())
    result = train(tiny_policy, pairs, workdir / name, **options)
    baseline = [h["loss"] for h in zero0_run[0]["history"]]
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == len(baseline) == TOTAL_STEPS
    for ours, reference in zip(losses, baseline):
        assert math.isfinite(ours) and abs(ours - reference) <= rel_tolerance * abs(reference), (losses, baseline)


def test_a_stateful_loss_resumes_its_state_from_the_checkpoint(ray_session, tiny_policy, pairs, workdir):
    """Selfie's threshold is the 10th percentile of the last 50 step margins (0 before 50 steps): a
    run resumed at step 40 must restore the 40 margins from the checkpoint, or its tau would stay 0
    until step 90 and every step from 51 on would differ. 16 pairs / global batch 2 x 8 epochs = 64 steps."""
    selfie = dict(loss="selfie", global_batch_size=2, micro_batch_size=2, epochs=8, checkpoint_every=20)
    checkpoints = workdir / "selfie-checkpoints"
    unbroken = train(tiny_policy, pairs, workdir / "selfie", checkpoint_dir=checkpoints, **selfie)
    history = unbroken["history"]
    # a record logs tau after its own margin: step 50's is the first over a full window
    assert len(history) == 64 and [h["threshold"] for h in history[:49]] == [0.0] * 49
    assert all(h["threshold"] != 0.0 for h in history[49:])
    assert [h["alpha"] for h in history] == [0.0] * 13 + [0.1] * 51  # warm-up: the first 20% of 64 steps

    crashed = workdir / "selfie-crashed"
    shutil.copytree(checkpoints, crashed)
    shutil.rmtree(crashed / "step000060")
    (crashed / "latest").write_text("step000040")
    resumed = train(tiny_policy, pairs, workdir / "selfie-resumed", checkpoint_dir=crashed, **selfie)
    assert resumed["history"] == history
    weights, baseline = load_weights(workdir / "selfie-resumed"), load_weights(workdir / "selfie")
    assert all(torch.equal(weights[k], baseline[k]) for k in baseline)


@pytest.mark.parametrize(("world_size", "zero_stage"), [(1, 0), (2, 2)])
def test_weights_held_between_stages_train_what_the_checkpoint_trains(world_size, zero_stage, ray_session, tiny_policy,
                                                                      pairs, workdir):
    """Two train stages in a row, reference = the entering policy (reference: previous): the
    second starts from the weights the ranks hold, and the policy model scores the reference;
    the same two stages with every policy and reference read from disk give bit-identical
    weights. ZeRO-2 in 2 ranks: the held copy comes out of ZeRO's flat buffers. (A run whose
    ranks restart every stage: tests/e2e/test_faults.py.)"""
    config = TrainConfig(**{**BASE, "world_size": world_size, "zero_stage": zero_stage, "checkpoint_every": 0})
    folder = workdir / f"held-{world_size}-{zero_stage}"
    ranks = kept_ranks(world_size)
    first = ranks.train((str(tiny_policy), "pi0"), (str(tiny_policy), "pi0"), str(pairs), str(folder / "held-1"), config)
    ranks.holds(str(folder / "held-1"), "pi1")
    second = ranks.train((str(folder / "held-1"), "pi1"), (str(folder / "held-1"), "pi1"), str(pairs),
                         str(folder / "held-2"), config)
    assert [first["ranks"][k] for k in ("policy_from", "reference_from")] == ["disk", "policy"]
    assert [second["ranks"][k] for k in ("reused", "policy_from", "reference_from")] == [True, "memory", "policy"]
    assert second["ranks"]["start_seconds"] == 0

    overrides = {"world_size": world_size, "zero_stage": zero_stage, "checkpoint_every": 0}
    train(tiny_policy, pairs, folder / "disk-1", **overrides)
    from_disk = train(folder / "disk-1", pairs, folder / "disk-2", **overrides)
    assert from_disk["ranks"]["policy_from"] == "disk" and from_disk["history"] == second["history"]
    initial = load_weights(tiny_policy)
    for stage in ("1", "2"):
        held, loaded = load_weights(folder / f"held-{stage}"), load_weights(folder / f"disk-{stage}")
        assert held.keys() == loaded.keys() and all(torch.equal(held[k], loaded[k]) for k in held), stage
    assert any(not torch.equal(held[k], initial[k]) for k in held)  # the stages trained


def test_a_digest_other_than_the_held_one_loads_from_disk(ray_session, tiny_policy, pairs, workdir):
    """The ranks hold pi1, but the stage must train another policy (a resume, a fork, a redo):
    it reads the folder, and trains exactly what a stage from disk trains."""
    config = TrainConfig(**{**BASE, "checkpoint_every": 0})
    ranks = kept_ranks(1)
    ranks.train((str(tiny_policy), "pi0"), (str(tiny_policy), "pi0"), str(pairs), str(workdir / "other-1"), config)
    ranks.holds(str(workdir / "other-1"), "pi1")
    other = ranks.train((str(tiny_policy), "pi0"), (str(tiny_policy), "pi0"), str(pairs), str(workdir / "other-2"),
                        config)
    assert other["ranks"]["policy_from"] == "disk"
    assert other["history"] == train(tiny_policy, pairs, workdir / "other-disk", checkpoint_every=0)["history"]
    ours, theirs = load_weights(workdir / "other-2"), load_weights(workdir / "other-disk")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.fixture(scope="module")
def triples(workdir, tiny_policy, small_pairs) -> Path:
    """small_pairs with a gold response per pair (random ids, lengths 5-20), as pairs.type triple writes them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    vocab = np.array([i for i in range(len(tokenizer)) if i not in set(tokenizer.all_special_ids)])
    rng = np.random.default_rng(7)
    rows = pq.read_table(small_pairs).to_pylist()
    for row in rows:
        row["gold_token_ids"] = rng.choice(vocab, size=int(rng.integers(5, 21))).tolist()
    path = workdir / "triples.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _policy_logps(policy_dir, pairs_path, responses):
    """{response: summed log-probs (float64) per pair, response lengths} under the policy, test-side."""
    from transformers import AutoModelForCausalLM

    from selfplay.models.logps import pad_sequences, response_logps

    rows = pq.read_table(pairs_path).to_pylist()
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    logps = {}
    for name in responses:
        batch = pad_sequences([r["prompt_token_ids"] for r in rows], [r[f"{name}_token_ids"] for r in rows], 0,
                              BASE["max_length"], BASE["max_prompt_length"])
        with torch.no_grad():
            logps[name] = (response_logps(model, *batch).double(), batch[2].sum(-1).double())
    return logps


@pytest.mark.parametrize("loss", ["tpo", "asft"])
def test_a_reference_free_loss_trains_without_a_reference(loss, ray_session, tiny_policy, triples, workdir):
    """TPO and ASFT read no reference: the ranks are given none, load none and run no reference pass.
    Step 1's loss is the loss's formula at the initial policy (the trainer fed it the right
    responses: TPO's gold NLL, ASFT's mean token log-probs). Then each moves the policy the way its
    math says: TPO raises the gold response's likelihood and the chosen-rejected margin; ASFT raises
    the chosen response's mean log-prob; both lower the rejected one's. The logged rewards of a reference-free loss are the policy's
    summed log-probs themselves."""
    settings = {**LEARNING, "learning_rate": 3e-4, "loss": loss, "beta": 0.1 if loss == "tpo" else 1.0}
    result = kept_ranks(1).train((str(tiny_policy), None), None, str(triples), str(workdir / loss),
                                 TrainConfig(**{**BASE, **settings}))
    history = result["history"]
    assert result["reference_seconds"] == 0 and result["ranks"]["reference_from"] == "none"
    before = _policy_logps(tiny_policy, triples, ("chosen", "rejected", "gold"))
    after = _policy_logps(workdir / loss, triples, ("chosen", "rejected", "gold"))
    (chosen, chosen_len), (rejected, rejected_len), (gold, gold_len) = (before[r] for r in ("chosen", "rejected", "gold"))
    if loss == "tpo":  # -log sigmoid(beta (lp_w - lp_l)) + alpha NLL(gold), alpha 1
        first = -torch.nn.functional.logsigmoid(0.1 * (chosen - rejected)) - gold / gold_len
    else:  # beta 1: -lp_w - log p_w - log(1 - p_l), lp the mean token log-probs
        lp_w, lp_l = chosen / chosen_len, rejected / rejected_len
        first = -lp_w - lp_w - torch.log1p(-torch.exp(lp_l))
    assert history[0]["loss"] == pytest.approx(first.mean().item(), rel=1e-4)
    assert history[0]["chosen_reward"] == pytest.approx(chosen.mean().item(), rel=1e-4)
    losses = [h["loss"] for h in history]
    mean = lambda logps, name: (logps[name][0] / logps[name][1]).mean().item()  # noqa: E731
    assert len(history) == 8 and losses[-1] < 0.75 * losses[0]
    if loss == "tpo":
        assert (after["gold"][0] / gold_len).mean() > (gold / gold_len).mean() + 1.0
        margin = lambda logps: (logps["chosen"][0] - logps["rejected"][0]).mean()  # noqa: E731
        assert margin(after) > margin(before) + 5.0
    else:
        assert (after["chosen"][0] / chosen_len).mean() > (chosen / chosen_len).mean() + 1.0
    assert mean(after, "rejected") < mean(before, "rejected")  # measured: -7.61 -> -8.88 (TPO), -8.07 (ASFT)


LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def test_lora_learns_and_changes_only_the_adapted_weights(ray_session, tiny_policy, small_pairs, workdir):
    """train.lora: DPO through a LoRA adapter on q_proj and v_proj learns the tiny dataset; the
    saved checkpoint is the adapter alone, naming its base's path and digest, and loads (merged)
    as any policy, where only the adapted projections moved. A second stage continues that adapter:
    from the adapter the ranks hold it trains what the same stage from the saved folder trains
    (bit-identical)."""
    from safetensors.torch import load_file

    from selfplay.models.adapter import ADAPTER_WEIGHTS, base_of
    from selfplay.models.causal_lm import load_causal_lm

    config = TrainConfig(**{**BASE, "loss": "dpo", **LEARNING, "lora": LORA})
    ranks = kept_ranks(1)
    first = ranks.train((str(tiny_policy), "pi0"), (str(tiny_policy), "pi0"), str(small_pairs),
                        str(workdir / "lora-1"), config)
    history = first["history"]
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # a fresh adapter changes nothing
    assert history[-1]["accuracy"] == 1.0 and history[-1]["loss"] < history[0]["loss"]
    assert not (workdir / "lora-1/model.safetensors").exists()
    assert base_of(workdir / "lora-1") == {"path": str(tiny_policy.resolve()), "digest": "pi0"}
    initial = load_weights(tiny_policy)
    merged = {k: v for k, v in load_causal_lm(workdir / "lora-1", torch.float32).state_dict().items() if k in initial}
    assert merged.keys() == initial.keys()
    moved = {k for k in initial if not torch.equal(initial[k], merged[k])}
    assert moved and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in moved), sorted(moved)

    ranks.holds(str(workdir / "lora-1"), "pi1")
    second = ranks.train((str(workdir / "lora-1"), "pi1"), (str(workdir / "lora-1"), "pi1"), str(small_pairs),
                         str(workdir / "lora-2"), config)
    assert second["ranks"]["policy_from"] == "memory"
    assert second["history"][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # reference: the entering adapter
    from_disk = train(workdir / "lora-1", small_pairs, workdir / "lora-2-disk", loss="dpo", **LEARNING, lora=LORA)
    assert from_disk["ranks"]["policy_from"] == "disk" and from_disk["history"] == second["history"]
    held, loaded = load_file(workdir / "lora-2" / ADAPTER_WEIGHTS), load_file(workdir / "lora-2-disk" / ADAPTER_WEIGHTS)
    assert held.keys() == loaded.keys() and all(torch.equal(held[k], loaded[k]) for k in held)
    assert base_of(workdir / "lora-2") == base_of(workdir / "lora-1")  # always the run's base plus one adapter
