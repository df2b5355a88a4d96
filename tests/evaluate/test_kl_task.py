"""KL scoring when the recipe trains on GPUs: a Ray task with one GPU, which the engines give
back only when no GPU is free (on a Ray cluster that declares one GPU, as test_gpu_sharing)."""

import sys

import numpy as np
import pyarrow as pa
import pytest
import ray

from selfplay.actors import Actors
from selfplay.artifacts import Artifact
from selfplay.context import RunContext
from selfplay.evaluate.kl import kl_metrics
from selfplay.evaluate.stage import policy_kl
from selfplay.recipe import load_recipe

from conftest import REPO


class GpuHolder:
    def ready(self):
        return True


class EnginesHoldingTheGpu:
    """Stands in for the engine pool: one actor holding the cluster's only GPU."""

    def __init__(self):
        self.actor = ray.remote(num_gpus=1, num_cpus=0)(GpuHolder).remote()
        ray.get(self.actor.ready.remote())
        self.shut_down = False

    def shutdown(self):
        ray.kill(self.actor)
        self.shut_down = True


@pytest.fixture(scope="module")
def one_gpu_ray():
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=128 << 20)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.mark.timeout(300)  # were the GPU never given back, the task would wait for it
def test_kl_runs_as_a_gpu_task_after_the_engines_give_their_gpu_back(one_gpu_ray, tiny_policy, tmp_path):
    from selfplay.models.tiny_policy import build_tiny_policy

    trained = build_tiny_policy(tmp_path / "trained", seed=1)
    recipe = load_recipe(REPO / "recipes" / "quickstart-cpu.yaml", ["train.num_gpus_per_rank=1"])
    rng = np.random.default_rng(0)
    samples = pa.Table.from_pylist([{"prompt_id": p, "prompt_token_ids": rng.integers(10, 2000, 6).tolist(),
                                     "token_ids": rng.integers(10, 2000, 5).tolist()} for p in range(4) for _ in range(2)])
    actors = Actors(recipe, str(tiny_policy), {"generate": 1.0, "train": 1.0})
    actors.pool = engines = EnginesHoldingTheGpu()
    ctx = RunContext(run_dir=tmp_path, recipe=recipe, actors=actors, initial=Artifact(tiny_policy, "initial"))

    metrics = policy_kl(ctx, samples, str(trained))

    assert engines.shut_down and actors.pool is None          # released: the task needed the only GPU
    expected = kl_metrics(samples, str(trained), str(tiny_policy))  # the same scoring in this process
    assert metrics == pytest.approx(expected, rel=1e-9)
    assert metrics["kl_vs_initial_ci_low"] <= metrics["kl_vs_initial"] <= metrics["kl_vs_initial_ci_high"]
    assert metrics["kl_vs_initial"] != 0.0                      # two different random policies
