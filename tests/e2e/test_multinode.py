"""Two engine replicas on two Ray nodes, and a node lost while they generate.

A simulated cluster on this machine (ray.cluster_utils.Cluster: a head and a worker node, each a
raylet of its own). Each node declares host memory for one CPU engine replica only (the pool
reserves a replica's KV cache and weights in its placement group), so two replicas must land on
two nodes. Real `selfplay run --ray-address` drivers join it:
  - an unbroken run, whose generate manifest shows the replicas' nodes;
  - a run whose worker node is killed (SIGKILL of its raylet and workers) while iteration 1
    generates: the stage is retried on the head and a replacement node, and the run ends with
    the unbroken run's final policy (per-request seeds: samples do not depend on placement).

Only this test's cluster and drivers are touched (cluster.remove_node / cluster.shutdown, the
driver's own session); every wait has a deadline.
"""

import hashlib
import os
import subprocess
import sys
import time

import psutil
import pytest

from conftest import REPO
from fault_runs import MARKER_DEADLINE, driver_session, wait_for

pytestmark = pytest.mark.slow

GIB = 1 << 30
# A replica reserves generate.kv_cache_gib (0.25) + the tiny policy's weights (~2 MB): one per node.
NODE = dict(num_cpus=2, memory=int(0.4 * GIB), object_store_memory=96 << 20)
# A killed raylet is noticed by the GCS health check: ~3 s here instead of Ray's default ~30 s.
HEAD = dict(NODE, include_dashboard=False,
            _system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 6})
# One sequence at a time per engine: iteration 1's generation lasts seconds instead of 0.3 s, so
# the node is killed inside it (samples do not depend on batching: per-request seeds).
RUN = ["iterations=1", "prompts.per_iteration=16", "prompts.eval_size=8", "train.epochs=2", "tracking.wandb=false",
       "generate.replicas=2", "generate.engine_args.max_num_seqs=1", "max_stage_retries=1"]
# Auth off, said explicitly to the nodes and the drivers: an earlier ray.init() in this pytest
# process sets RAY_AUTH_MODE=token in its environment (Ray's default for a new local cluster),
# which the nodes started here would inherit and drivers started from a copy made earlier not
# (measured: a driver given RAY_AUTH_MODE=token here has its actors cancelled).
AUTH = {"RAY_AUTH_MODE": "disabled"}
DRIVER_ENV = {**os.environ, **AUTH}
RUN_TIMEOUT = 900
FINAL_POLICY = "iter-001/train/policy/model.safetensors"


@pytest.fixture(scope="module")
def cluster(tiny_policy):
    from ray.cluster_utils import Cluster

    previous = {key: os.environ.get(key) for key in AUTH}
    os.environ.update(AUTH)
    try:
        made = Cluster(initialize_head=True, head_node_args=HEAD)
        made.worker = made.add_node(**NODE)
        made.wait_for_nodes(timeout=60)
        yield made
        made.shutdown()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_args(run_dir, cluster) -> list[str]:
    return ["run", "recipes/quickstart-cpu.yaml", "--run-dir", str(run_dir), "--ray-address", cluster.address, *RUN]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def unbroken(cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("multinode") / "unbroken"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", *run_args(run_dir, cluster)], cwd=REPO,
                            env=DRIVER_ENV, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"unbroken two-node run: {time.monotonic() - start:.1f} s")
    return run_dir


def engines_of(run_dir) -> list[dict]:
    import json

    return json.loads((run_dir / "iter-001/generate/manifest.json").read_text())["placement"]["engines"]


def test_two_replicas_run_on_two_nodes(cluster, unbroken):
    engines = engines_of(unbroken)
    assert len(engines) == 2
    assert {engine["node"] for engine in engines} == {cluster.head_node.node_id, cluster.worker.node_id}
    assert all(engine["device"] == "cpu" for engine in engines)


def wait_until_generating(node, driver: subprocess.Popen, deadline: float = MARKER_DEADLINE) -> None:
    """Until the vLLM engine actor on `node` (a child of its raylet) is inside `generate`: Ray
    titles a worker `ray::<Class>.<method>` while it runs one."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert driver.poll() is None, f"run ended before generating: {driver.stderr.read()[-2000:]}"
        for child in raylet.children(recursive=True):
            try:
                if " ".join(child.cmdline()).startswith("ray::VLLMEngine.generate"):
                    return
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.01)
    raise AssertionError(f"the engine on node {node.node_id} did not generate within {deadline} s")


def test_a_node_killed_during_generation_is_survived_by_the_stage_retry(cluster, unbroken, tmp_path):
    run_dir = tmp_path / "killed"
    start = time.monotonic()
    driver = subprocess.Popen([sys.executable, "-m", "selfplay.cli", *run_args(run_dir, cluster)], cwd=REPO,
                              env=DRIVER_ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    with driver_session(driver):
        wait_for(driver, run_dir / "iter-001/generate.tmp")
        wait_until_generating(cluster.worker, driver)  # iteration 1's samples, half of them on the worker node
        lost = cluster.worker.node_id
        cluster.remove_node(cluster.worker, allow_graceful=False)
        killed_at = time.monotonic() - start
        cluster.worker = cluster.add_node(**NODE)  # two replicas need two nodes' memory again
        stderr = driver.communicate(timeout=RUN_TIMEOUT)[1]
    print(f"two-node run with a node killed at {killed_at:.1f} s: {time.monotonic() - start:.1f} s")
    assert driver.returncode == 0, stderr[-3000:]
    assert "iter 1 generate : a Ray worker died" in stderr and "iter 1 generate  running (retry 1)" in stderr
    nodes = {engine["node"] for engine in engines_of(run_dir)}
    assert nodes == {cluster.head_node.node_id, cluster.worker.node_id} and lost not in nodes
    assert sha256(run_dir / FINAL_POLICY) == sha256(unbroken / FINAL_POLICY)


def test_doctor_checks_every_node_of_the_cluster(cluster, tmp_path):
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "doctor", "--ray-address", cluster.address,
                             "--run-dir", str(tmp_path), "--min-free-gib", "0"], cwd=REPO, env=DRIVER_ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    nodes = [line for line in result.stdout.splitlines() if "node " in line and "same versions as here" in line]
    alive = [node for node in cluster.list_all_nodes() if node.any_processes_alive()]
    assert len(nodes) == len(alive) >= 2, result.stdout


def test_judge_replicas_and_training_ranks_spread_over_the_nodes(tmp_path):
    """One iteration on a cluster of its own whose nodes each hold one engine, one judge replica
    and one training rank: the two DeepSpeed ranks train over gloo across the nodes, and every
    manifest records where its actors ran."""
    from ray.cluster_utils import Cluster

    node = dict(NODE, num_cpus=3)  # CPUs: 2 engines + 2 judge replicas + 2 ranks, all at once
    previous = {key: os.environ.get(key) for key in AUTH}
    os.environ.update(AUTH)
    made = Cluster(initialize_head=True, head_node_args=dict(HEAD, num_cpus=3))
    try:
        made.add_node(**node)
        made.wait_for_nodes(timeout=60)
        run_dir = tmp_path / "spread"
        args = [*run_args(run_dir, made), "generate.engine_args.max_num_seqs=256", "train.world_size=2",
                "annotate.type=reward_model", "annotate.path=tiny:reward", "annotate.function=null",
                "annotate.replicas=2"]
        result = subprocess.run([sys.executable, "-m", "selfplay.cli", *args], cwd=REPO, env=DRIVER_ENV,
                                capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert result.returncode == 0, result.stderr[-3000:]
        import json

        annotate = json.loads((run_dir / "iter-001/annotate/manifest.json").read_text())["placement"]
        train = json.loads((run_dir / "iter-001/train/manifest.json").read_text())
        judge_nodes = {replica["node"] for replica in annotate["judges"]["annotate"]}
        rank_nodes = {rank["node"] for rank in train["rank_placement"]}
        engine_nodes = {engine["node"] for engine in annotate["engines"]}
        assert len(judge_nodes) == 2 and len(rank_nodes) == 2 and len(engine_nodes) == 2
        assert annotate["cluster"]["nodes"] == 2
    finally:
        made.shutdown()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
