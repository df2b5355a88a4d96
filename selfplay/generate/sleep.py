"""What the vLLM engines do when the next stage needs their GPUs: stay, sleep, or shut down.

The engines live for the whole run, but on a node that cannot hold them and the judge or the
training ranks at once they must give their GPUs away twice per iteration. Killing and
restarting them costs a minute or two per 7B engine; vLLM's sleep mode frees the GPU without
ending the process (vllm.LLM(enable_sleep_mode=True), then `llm.sleep(level)` / `llm.wake_up()`):

  - level 1 offloads the weights to host (CPU) memory and drops the KV cache; waking copies
    the weights back. Right when the next generation samples the same weights.
  - level 2 drops the weights and the KV cache; waking gives empty buffers that must be
    filled by a weight load. Right when a new policy is loaded anyway (after training), and
    it needs no host memory.

`decide(transition)` is the pure decision for one stage transition; `wake_steps(decision, ...)`
the calls that bring a sleeping engine back. Neither touches Ray or vLLM, so both are
unit-tested on tables of cases (tests/generate/test_sleep.py).

Rules, in order:
  1. `generate.keep_engine: false`: the engines are rebuilt per stage anyway -> shut down.
  2. Enough GPUs are free beside the engines (or the next stage needs none) -> stay loaded.
  3. Sleep mode is unavailable -> shut down, the next generation restarts them. vLLM offers
     it on CUDA (and ROCm, XPU) only: `Platform.is_sleep_mode_available`; the CPU build
     refuses `enable_sleep_mode`. An engine started without `enable_sleep_mode` cannot sleep.
  4. Ray counts a sleeping engine's GPUs as held: sleep helps only when the next stage's
     actors are placed on the engines' GPUs (a shared placement group with fractional GPU
     requests). Otherwise -> shut down.
  5. A sleeping engine still holds its CUDA context and allocator pool on each GPU
     (`sleeping_engine_gib`, about 0.5-1 GiB); a next stage that needs more than the rest of
     the GPU -> shut down.
  6. Sleep: level 1 when the next generation uses the weights the engines hold and the host
     memory of the busiest node holds its replicas' weights; level 2 otherwise.
"""

from dataclasses import dataclass
from typing import Literal

Action = Literal["stay", "sleep", "shutdown"]


@dataclass(frozen=True)
class Transition:
    """One stage transition, seen from the engines (GPU counts in Ray units, memory in GiB)."""
    next_stage: str                 # e.g. "annotate", "train", "evaluate": named in the reason
    gpus_needed: float              # GPUs the next stage's actors need
    gpus_free: float                # GPUs free now, the engines' not counted
    same_policy_next: bool          # the next generation samples the weights the engines hold now
    sleep_supported: bool           # CUDA vLLM started with enable_sleep_mode=True
    shares_engine_gpus: bool        # the next stage's actors can be placed on the engines' GPUs
    gpu_memory_gib: float = 80.0    # memory of one GPU
    next_gpu_memory_gib: float = 0.0  # memory the next stage needs on each GPU it shares with an engine
    sleeping_engine_gib: float = 1.0  # what a sleeping engine keeps on its GPU (CUDA context, pool)
    weights_gib_per_replica: float = 0.0  # host memory one replica's weights take at level 1
    replicas_per_node: int = 1      # replicas on the busiest node (they offload to its host memory)
    host_memory_free_gib: float = 0.0  # that node's free host memory, after the next stage's own needs
    keep_engine: bool = True        # generate.keep_engine


@dataclass(frozen=True)
class Decision:
    action: Action
    level: int | None = None        # 1 or 2 when action == "sleep"
    reason: str = ""

    @property
    def reload_on_wake(self) -> bool:
        """Level 2 drops the weights: waking must be followed by a weight load."""
        return self.action == "sleep" and self.level == 2


def decide(t: Transition) -> Decision:
    """The engines' move before `t.next_stage` starts (rules in the module docstring)."""
    if not t.keep_engine:
        return Decision("shutdown", reason="generate.keep_engine is false: engines are rebuilt per stage")
    if t.gpus_needed <= 0 or t.gpus_free >= t.gpus_needed:
        return Decision("stay", reason=f"{t.next_stage} needs {t.gpus_needed:g} GPUs and {t.gpus_free:g} are free "
                                       f"beside the engines")
    if not t.sleep_supported:
        return Decision("shutdown", reason=f"{t.next_stage} needs the engines' GPUs and vLLM sleep mode is not "
                                           f"available here (CUDA only): the engines restart for the next generation")
    if not t.shares_engine_gpus:
        return Decision("shutdown", reason=f"{t.next_stage}'s actors are not placed on the engines' GPUs, and Ray "
                                           f"counts a sleeping engine's GPUs as held")
    room = t.gpu_memory_gib - t.sleeping_engine_gib
    if t.next_gpu_memory_gib > room:
        return Decision("shutdown", reason=f"{t.next_stage} needs {t.next_gpu_memory_gib:g} GiB per GPU and a sleeping "
                                           f"engine leaves {room:g} GiB of {t.gpu_memory_gib:g}")
    offload = t.weights_gib_per_replica * t.replicas_per_node
    if not t.same_policy_next:
        return Decision("sleep", 2, reason=f"the next generation loads a new policy, so the weights are dropped "
                                           f"(level 2) while {t.next_stage} runs")
    if offload > t.host_memory_free_gib:
        return Decision("sleep", 2, reason=f"host memory ({t.host_memory_free_gib:g} GiB free) cannot hold "
                                           f"{t.replicas_per_node} replicas' weights ({offload:g} GiB): level 2, "
                                           f"reloaded from disk on wake")
    return Decision("sleep", 1, reason=f"weights offloaded to host memory ({offload:g} GiB) while {t.next_stage} runs; "
                                       f"the next generation samples the same policy")


def wake_steps(decision: Decision, policy_changed: bool) -> list[tuple[str, tuple[str, ...] | None]]:
    """The engine calls before the next generation, as (method, wake_up tags).

    After level 2, the weights' buffers are woken alone, filled by the weight load, and only
    then the KV cache (and scheduler) reallocated, so the load never competes with a full KV
    cache (vLLM's RLHF colocation example does the same). A shut-down engine is started again
    by its pool; one that stayed only needs a load when the policy changed.
    """
    if decision.action == "shutdown":
        return [("start", None)]
    if decision.action == "stay":
        return [("load_policy", None)] if policy_changed else []
    if decision.level == 2:
        return [("wake_up", ("weights",)), ("load_policy", None), ("wake_up", None)]
    return [("wake_up", None)] + ([("load_policy", None)] if policy_changed else [])


def iteration_transitions(last_iteration: bool) -> list[tuple[str, bool | None]]:
    """Where the engines meet another GPU group in one iteration, and whether the generation
    after it samples the same weights (None: none follows, the run ends).

    generate (pi_t) -> annotate and train: the next generation is the evaluation of pi_{t+1};
    eval-gen (pi_{t+1}) -> evaluate: the next generation is iteration t+1's, with pi_{t+1}.
    """
    return [("annotate", False), ("train", False), ("evaluate", None if last_iteration else True)]
