"""The run's long-lived actors: the vLLM engine pool, the judges and the training ranks, started
on first use.

One owner for all of them, so GPU turn-taking and retries live in one place: before a group
starts (engines, a judge, the training ranks) `make_room` releases whichever actors hold GPUs
it needs (a node rarely holds 8 engines, a PairRM and 8 ranks at once, see selfplay.cluster);
released ranks are started again by the next train stage, which then reads its policy from disk.
After a Ray worker died `drop` forgets them all so the retried stage starts fresh ones.
"""

import logging

log = logging.getLogger("selfplay")


class Actors:
    def __init__(self, recipe, initial_policy: str, gpu_needs: dict[str, float]):
        self.recipe = recipe
        self.initial_policy = initial_policy  # a Selfie judge's default reference
        self.gpu_needs = gpu_needs
        self.pool = None
        self.judges = {}  # role ("annotate" / "evaluate") -> judge actor
        self.ranks = None  # selfplay.train.ranks.TrainingRanks

    def engines(self, policy_path: str):
        """The engine pool with `policy_path` loaded (in place when the pool exists)."""
        from selfplay.generate.pool import EnginePool

        if self.pool is None:
            self.make_room("generate")
            lora = self.recipe.train.lora  # adapters are served as LoRARequests on the base
            self.pool = EnginePool(policy_path, self.recipe.generate, self.recipe.policy.dtype, self.recipe.seed,
                                   lora_rank=None if lora is None else lora.r)
            self.pool.loaded = policy_path
        elif self.pool.loaded != policy_path:
            self.pool.load_policy(policy_path)
            self.pool.loaded = policy_path
        return self.pool

    def drop_engines(self) -> None:
        """Shut the engine pool down, whatever the recipe keeps: the next `engines` call builds a
        fresh one (a model of another architecture cannot be loaded in place; Magpie's writer)."""
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def release_engines(self) -> None:
        """Before training: engines leave unless the recipe keeps them (generate.keep_engine)."""
        if self.pool is not None and not self.recipe.generate.keep_engine:
            self.pool.shutdown()
            self.pool = None

    def judge(self, role: str, config, policy_path: str):
        """The judge of `config` for `role`. A judge that scores with the current policy (Selfie)
        is rebuilt when the policy changes; any other is built once per run."""
        from selfplay.judging.registry import make_judge

        judge = self.judges.get(role)
        if judge is not None and config.judges_with_policy and judge.policy_path != policy_path:
            self._shutdown(role)
            judge = None
        if judge is None:
            self.make_room(role)
            judge = make_judge(config, policy_path, self.recipe.policy.seed, default_reference=self.initial_policy)
            judge.policy_path = policy_path
            self.judges[role] = judge
        return judge

    def start_training_ranks(self, config) -> None:
        """Ask for the ranks now when they need no GPU, so that they start while the engines do
        (on GPUs they are started by the first train stage, when `make_room` knows what is free;
        on a cluster of several nodes too: ranks packed first could take a node an engine's
        tensor-parallel group needs whole)."""
        from selfplay.train.ranks import TrainingRanks

        if self.ranks is None and not self.gpu_needs.get("train"):
            self.ranks = TrainingRanks(config.world_size, config.num_gpus_per_rank)

    def training_ranks(self, config):
        """The DeepSpeed ranks for a train stage of `config`: the run's, if they have its shape."""
        from selfplay.train.ranks import TrainingRanks

        if self.ranks is not None and not self.ranks.fits(config):
            self.drop_training_ranks()
        if self.ranks is None:
            self.make_room("train")
            self.ranks = TrainingRanks(config.world_size, config.num_gpus_per_rank)
        return self.ranks

    def drop_training_ranks(self) -> None:
        if self.ranks is not None:
            self._quiet_shutdown(self.ranks)
            self.ranks = None

    def placement(self) -> dict:
        """Where the actors run (recorded in each stage's manifest): the driver's host, the Ray
        nodes and resources of the cluster, and each engine replica's node, device and PID."""
        import platform

        import ray

        where = {"driver_host": platform.node()}
        if ray.is_initialized():
            resources = {k: v for k, v in ray.cluster_resources().items() if "_group_" not in k}  # not placement groups
            where["cluster"] = {"nodes": sum(node["Alive"] for node in ray.nodes()), "resources": resources}
        if self.pool is not None:
            keys = ("node", "node_ip", "device", "pid", "threads", "resources", "bundle_nodes", "tensor_parallel_size",
                    "worker_pids")
            where["engines"] = [{k: stats.get(k) for k in keys} for stats in self.pool.stats]
        for role, judge in self.judges.items():
            if hasattr(judge, "placement"):  # a model judge's actors (a function judge runs here)
                if not hasattr(judge, "where"):
                    try:
                        judge.where = judge.placement()
                    except Exception:  # a dead actor: the stage that needs it again restarts it
                        continue
                where.setdefault("judges", {})[role] = judge.where
        return where

    def make_room(self, group: str, gpus: float | None = None) -> None:
        """Release the actors if fewer GPUs are free than `group` needs (or `gpus`, for a task
        outside the recipe's groups): on a node that cannot hold every group at once they take turns."""
        from selfplay.cluster import free_gpus, wait_for_free_gpus

        gpus = self.gpu_needs.get(group, 0.0) if gpus is None else gpus
        if gpus <= 0 or free_gpus() >= gpus:
            return
        held = (["vLLM engines"] if self.pool is not None else []) + [f"{role} judge" for role in self.judges] \
            + (["training ranks"] if self.ranks is not None else [])
        if held:
            log.info("releasing the %s: %g GPUs needed, %g free", " and the ".join(held), gpus, free_gpus())
            self.drop()
        wait_for_free_gpus(gpus)  # also the GPUs of actors that just ended (e.g. the training ranks)

    def drop(self) -> None:
        """Shut down and forget every actor (after a worker died, or to free GPUs); the next
        stage that needs one starts it again."""
        if self.pool is not None:
            self._quiet_shutdown(self.pool)
            self.pool = None
        for role in list(self.judges):
            self._shutdown(role)
        self.drop_training_ranks()

    def _shutdown(self, role: str) -> None:
        self._quiet_shutdown(self.judges.pop(role))

    @staticmethod
    def _quiet_shutdown(actor) -> None:
        try:
            actor.shutdown()
        except Exception:  # already dead
            pass
