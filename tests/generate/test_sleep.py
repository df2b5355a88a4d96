"""The engines' move at each stage transition (stay / sleep level 1 or 2 / shut down), over a
table of cases built around the SPPO paper recipe on one 8x80 GB node: 8 engines (one 7B
replica per GPU, ~14.5 GiB of bf16 weights each), then a 1-GPU PairRM judge or 8 training ranks."""

import dataclasses

import pytest

from selfplay.generate.sleep import Decision, Transition, decide, iteration_transitions, wake_steps

# The 8-GPU node with every GPU taken by an engine; the judge's actors share the engines' GPUs.
FULL_NODE = Transition(next_stage="annotate", gpus_needed=1, gpus_free=0, same_policy_next=True,
                       sleep_supported=True, shares_engine_gpus=True, gpu_memory_gib=80,
                       next_gpu_memory_gib=4, sleeping_engine_gib=1, weights_gib_per_replica=14.5,
                       replicas_per_node=8, host_memory_free_gib=1500)


def case(**changes):
    return dataclasses.replace(FULL_NODE, **changes)


CASES = [
    # (what, transition, action, level)
    ("room beside the engines: 7 engines + 1 PairRM on 8 GPUs", case(gpus_free=1), "stay", None),
    ("the next stage needs no GPU (function judge)", case(gpus_needed=0), "stay", None),
    ("keep_engine false rebuilds per stage, even with room", case(gpus_free=8, keep_engine=False), "shutdown", None),
    ("CPU vLLM: no sleep mode, release and restart", case(sleep_supported=False), "shutdown", None),
    ("actors not placed on the engines' GPUs: Ray still counts them held", case(shares_engine_gpus=False),
     "shutdown", None),
    ("training needs 79.5 GiB per GPU, a sleeping engine leaves 79", case(next_stage="train", gpus_needed=8,
                                                                            next_gpu_memory_gib=79.5), "shutdown", None),
    ("training needs exactly what a sleeping engine leaves", case(next_stage="train", gpus_needed=8,
                                                                  next_gpu_memory_gib=79, same_policy_next=False),
     "sleep", 2),
    ("eval-gen -> evaluate: same policy next, host memory holds 8 x 14.5 GiB", case(), "sleep", 1),
    ("same policy, host memory holds exactly 116 GiB", case(host_memory_free_gib=116), "sleep", 1),
    ("same policy, host memory 115 GiB < 116 GiB of weights", case(host_memory_free_gib=115), "sleep", 2),
    ("generate -> annotate: a new policy follows, weights dropped", case(same_policy_next=False), "sleep", 2),
    ("one GPU short with 0.5 free", case(gpus_needed=1, gpus_free=0.5), "sleep", 1),
]


@pytest.mark.parametrize("what, transition, action, level", CASES, ids=[c[0] for c in CASES])
def test_decision_table(what, transition, action, level):
    decision = decide(transition)
    assert (decision.action, decision.level) == (action, level), decision.reason
    assert decision.reason  # every decision says why (it goes to the log)


def test_reasons_name_the_numbers():
    assert "115 GiB free" in decide(case(host_memory_free_gib=115)).reason
    assert "116 GiB" in decide(case(host_memory_free_gib=115)).reason
    assert "79.5 GiB" in decide(case(next_gpu_memory_gib=79.5)).reason
    assert "CUDA only" in decide(case(sleep_supported=False)).reason


def test_only_level_2_reloads_on_wake():
    assert decide(case(same_policy_next=False)).reload_on_wake
    assert not decide(case()).reload_on_wake
    assert not decide(case(sleep_supported=False)).reload_on_wake


@pytest.mark.parametrize("decision, policy_changed, steps", [
    (Decision("sleep", 1), False, [("wake_up", None)]),
    (Decision("sleep", 1), True, [("wake_up", None), ("load_policy", None)]),
    # level 2: weights woken alone, loaded, then the KV cache
    (Decision("sleep", 2), True, [("wake_up", ("weights",)), ("load_policy", None), ("wake_up", None)]),
    (Decision("sleep", 2), False, [("wake_up", ("weights",)), ("load_policy", None), ("wake_up", None)]),
    (Decision("stay"), False, []),
    (Decision("stay"), True, [("load_policy", None)]),
    (Decision("shutdown"), True, [("start", None)]),
])
def test_wake_steps(decision, policy_changed, steps):
    assert wake_steps(decision, policy_changed) == steps


def test_iteration_transitions_follow_the_policy():
    # after training the policy changes (level 2 is enough); after evaluation the same policy samples next
    assert iteration_transitions(last_iteration=False) == [("annotate", False), ("train", False), ("evaluate", True)]
    assert iteration_transitions(last_iteration=True)[-1] == ("evaluate", None)
