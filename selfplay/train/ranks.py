"""The run's DeepSpeed training ranks: started once, kept from one train stage to the next.

Starting a rank costs seconds that have nothing to do with the stage (a Ray worker process, the
torch/transformers/DeepSpeed imports, the process group), so the ranks live for the run like the
engines (`train.keep_ranks`, on by default). After a stage each rank keeps a copy of the weights
it just trained (ZeRO 0-2; under ZeRO-3 no rank holds them whole; under train.lora the adapter's). The driver records which
policy that is once the stage has committed it (`holds`), by the digest its manifest records; the
next stage starts from the copy only when the policy it must train has that digest, and from disk
otherwise: a resume, a fork, a redo, another reference rule, ZeRO-3. The copy is bit for bit the
saved checkpoint, so a run ends with the same weights whether its ranks live or restart every
stage (tests/e2e/test_faults.py, tests/train/test_trainer.py).
"""

import os
import time

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from selfplay.cluster import where_it_runs
from selfplay.models import adapter
from selfplay.train.trainer import TrainerRank


class TrainingRanks:
    """`world_size` TrainerRank actors in one PACK placement group, joined in one process group."""

    def __init__(self, world_size: int, num_gpus_per_rank: float):
        """Asks Ray for the ranks and returns at once: they start (imports, process group) while
        the driver goes on, e.g. while the engines start; `train` waits for them."""
        self.started = time.perf_counter()
        self.shape = (world_size, num_gpus_per_rank)
        bundle = {"CPU": 1, **({"GPU": num_gpus_per_rank} if num_gpus_per_rank else {})}
        self.group = placement_group([bundle] * world_size, strategy="PACK")
        threads = 0 if num_gpus_per_rank else max(1, (os.cpu_count() or 1) // world_size)
        actor = ray.remote(num_cpus=1, num_gpus=num_gpus_per_rank)(TrainerRank)
        self.ranks = [actor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=r)).remote(r, world_size, threads) for r in range(world_size)]
        address = self.ranks[0].rendezvous_address.remote()  # rank 0's answer is every rank's MASTER_ADDR/PORT
        self._joined = [rank.connect.remote(address) for rank in self.ranks]
        self._where = [rank.__ray_call__.remote(where_it_runs) for rank in self.ranks]
        self.placement = None  # each rank's node and PID, once joined
        self.start_seconds = None  # from the request to every rank joined
        self.stages = 0  # train stages these ranks ran
        self.held = None  # digest of the policy the ranks hold in memory
        self._trained = None  # the last stage's output folder, until `holds` learns its digest

    def ready(self) -> None:
        if self.placement is None:
            ray.get(self._joined)
            self.placement = [{"rank": r, **w} for r, w in enumerate(ray.get(self._where))]
            self.start_seconds = time.perf_counter() - self.started

    def fits(self, config) -> bool:
        return self.shape == (config.world_size, config.num_gpus_per_rank)

    def train(self, policy: tuple[str, str | None], reference: tuple[str, str | None] | None, pairs_path: str,
              out_dir: str, config, checkpoint_dir: str | None = None) -> dict:
        """Train `policy` (path, digest) against `reference` (path, digest) on pairs_path into
        out_dir. A digest of None (a caller outside a run) means: load it from disk. A loss that
        needs no reference (its LossSpec) reads none, whatever `reference` names (it may be None)."""
        from selfplay.methods import LOSSES
        from selfplay.train.settings import TrainSettings

        settings = TrainSettings.of(config)  # what the ranks read: typed and frozen
        from_memory = policy[1] is not None and policy[1] == self.held
        if not LOSSES[config.loss].needs_reference:
            reference, reference_is_policy = None, False
        elif policy[1] is not None:
            reference_is_policy = reference[1] == policy[1]
        else:  # a caller outside a run names both by path
            reference_is_policy = os.path.realpath(reference[0]) == os.path.realpath(policy[0])
        self.held, self._trained = None, None  # the ranks' copy changes now; a failed stage leaves none
        waited = time.perf_counter()
        self.ready()
        waited = time.perf_counter() - waited
        reference_path = None if reference is None else reference[0]
        base = None if settings.lora is None else adapter.base_for(*policy)  # what the adapter adapts
        results = ray.get([rank.train.remote(policy[0], reference_path, pairs_path, out_dir, settings, checkpoint_dir,
                                             from_memory=from_memory, reference_is_policy=reference_is_policy,
                                             base=base)
                           for rank in self.ranks])
        self.stages += 1
        self._trained = out_dir
        return {**results[0], "rank_placement": self.placement,
                "ranks": {"reused": self.stages > 1, "start_seconds": round(self.start_seconds, 3) if self.stages == 1
                          else 0.0, "waited_seconds": round(waited, 3),  # what the stage waited of their start
                          "policy_from": "memory" if from_memory else "disk",
                          "reference_from": "none" if reference is None else "policy" if reference_is_policy
                          else "disk"}}

    def holds(self, out_dir: str, digest: str) -> None:
        """The stage that trained into out_dir committed it as the policy with this digest."""
        if self._trained is not None and os.path.realpath(self._trained) == os.path.realpath(out_dir):
            self.held = digest

    def shutdown(self) -> None:
        """Kill the ranks at once: a rank may be mid-stage (a stop signal, a failed peer), and its
        actor would run a polite shutdown call only after the stage."""
        for rank in self.ranks:
            ray.kill(rank)
        self.ranks = []
        remove_placement_group(self.group)


def train_policy(policy_path: str, reference_path: str | None, pairs_path: str, out_dir: str, config,
                 checkpoint_dir: str | None = None) -> dict:
    """One train stage on ranks started for it and stopped after it (tests, benchmarks); reference_path
    None for a loss that needs no reference."""
    ranks = TrainingRanks(config.world_size, config.num_gpus_per_rank)
    reference = None if reference_path is None else (reference_path, None)
    try:
        return ranks.train((policy_path, None), reference, pairs_path, out_dir, config, checkpoint_dir)
    finally:
        ranks.shutdown()
