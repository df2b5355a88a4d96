"""GPU bookkeeping through the real pipeline on a Ray cluster that declares one GPU.

On a typical node the vLLM engines, the judge and the training ranks cannot all hold their
GPUs at once (the SPPO recipe: 8 + 1 + 8 on 8 GPUs). Ray's accounting is the same whether the
GPU is real or declared, so a CPU machine shows the behaviour: the engines give the GPU to the
trainers and come back for the next generation, instead of the run waiting forever on a
placement group. A group larger than the whole cluster is refused before any work.

The engines and ranks still compute on the CPU here (CPU builds of vLLM and torch).
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
# The head keeps Ray's defaults (token auth on, as after a user's `ray start`); a driver joining
# by address sends the token when RAY_AUTH_MODE=token, as the error below tells users.
HEAD_ENV = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
ENV = {**HEAD_ENV, "RAY_AUTH_MODE": "token"}
# evaluate.kl off: its GPU task would take the GPU from the engines once more per iteration
# (tests/evaluate/test_kl_task.py covers that path on its own)
SMALL = ["iterations=1", "prompts.per_iteration=16", "prompts.eval_size=8", "tracking.wandb=false", "evaluate.kl=false"]
ONE_GPU_EACH = ["generate.num_gpus_per_replica=1", "train.num_gpus_per_rank=1"]


@pytest.fixture(scope="module")
def one_gpu_cluster():
    """A Ray head owned by a child process (it ends with it) that declares 1 GPU."""
    # address="local": a cluster of its own even where another one runs on this host (ray.init
    # would join that one and refuse the resources given here)
    script = ("import sys, ray\n"
              "ray.init(address='local', num_cpus=6, num_gpus=1, include_dashboard=False,\n"
              "         object_store_memory=256 * 2**20)\n"
              "print(ray.get_runtime_context().gcs_address, flush=True)\n"
              "sys.stdin.read()\n")
    head = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=HEAD_ENV)
    address = head.stdout.readline().strip()
    assert address, "the Ray head did not start"
    yield address
    head.stdin.close()
    head.wait(timeout=60)


def run_cli(*args, env=ENV):
    return subprocess.run([sys.executable, "-m", "selfplay.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=env)


def test_engines_and_training_ranks_take_turns_on_one_gpu(one_gpu_cluster, tiny_policy, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("run", "recipes/quickstart-cpu.yaml", "--run-dir", str(run_dir), "--ray-address",
                     one_gpu_cluster, *SMALL, *ONE_GPU_EACH)
    assert result.returncode == 0, result.stderr[-3000:]
    # the train stage took the GPU from the engines, and the eval generation after it started them again
    assert result.stderr.count("releasing the vLLM engines") == 1, result.stderr[-3000:]
    assert (run_dir / "iter-001/eval-gen/manifest.json").exists()
    assert (run_dir / "iter-001/evaluate/manifest.json").exists()
    # each engine held the declared GPU, and ran as what it is, vLLM's CPU build (CPU options: no
    # torch.compile warm-up, the recipe's KV cache instead of half the node's memory)
    [engine] = json.loads((run_dir / "iter-001/generate/manifest.json").read_text())["placement"]["engines"]
    assert engine["resources"] == [{"CPU": 1.0, "GPU": 1.0}] and engine["device"] == "cpu"


def test_a_group_larger_than_the_cluster_is_refused_before_any_work(one_gpu_cluster, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("run", "recipes/quickstart-cpu.yaml", "--run-dir", str(run_dir), "--ray-address",
                     one_gpu_cluster, *SMALL, "train.world_size=2", "train.num_gpus_per_rank=1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("selfplay: error: train.world_size x train.num_gpus_per_rank "
                                                      "= 2 GPUs, but the Ray cluster has 1")
    assert not (run_dir / "run.json").exists()


def test_joining_a_cluster_without_its_token_says_how_to_send_it(one_gpu_cluster, tmp_path):
    result = run_cli("run", "recipes/quickstart-cpu.yaml", "--run-dir", str(tmp_path / "run"), "--ray-address",
                     one_gpu_cluster, *SMALL, env=HEAD_ENV)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"selfplay: error: --ray-address {one_gpu_cluster}: the cluster wants its auth token")
    assert "RAY_AUTH_MODE=token" in last
    assert not (tmp_path / "run" / "run.json").exists()
