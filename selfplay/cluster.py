"""Ray start-up, and the recipe's GPU needs against the cluster.

Start-up: a local cluster sized for the recipe, or an existing cluster by address. Workers get
the environment they share (the model cache, offline hub flags) through the job's runtime_env,
so the same recipe runs on a laptop and on a cluster.

GPUs: vLLM engines, model judges and training ranks are separate Ray actors, and a typical
node cannot hold them all at once (the SPPO recipe: 8 engines + 1 PairRM + 8 ranks on 8 GPUs).
Each group must fit the cluster by itself, which `check_gpu_fit` says before any work; the
driver then releases whichever groups are in the way when the next one needs the GPUs.
"""

import logging
import os
import signal
import threading
import time
from pathlib import Path

import ray

from selfplay import runs
from selfplay.recipe import RecipeError

log = logging.getLogger("selfplay")

WORKER_ENV = ("SELFPLAY_CACHE", "TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def start_ray(address: str | None, min_cpus: int) -> bool:
    """Join the cluster at `address`, or start a local one; True when this call started one."""
    if ray.is_initialized():
        return False
    # The CPU engine's own settings (in-process vLLM, no torch.compile) are set by the engine
    # actor itself, only on CPU (selfplay.generate.engine): on CUDA vLLM keeps its defaults.
    # OpenMP threads that sleep when idle instead of spinning: on CPU the engines, ranks and judges
    # of a run (or of two runs) share cores; two runs on 2 cores end ~10% sooner (benchmarks.md).
    env = {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore::DeprecationWarning",
           "OMP_WAIT_POLICY": "PASSIVE"}
    env.update({k: os.environ[k] for k in (*WORKER_ENV, "OMP_WAIT_POLICY") if k in os.environ})
    runtime_env = {"env_vars": env}
    if address:
        try:
            _init_keeping_signal_handlers(address=address, runtime_env=runtime_env, log_to_driver=True,
                                          configure_logging=False)
        except ConnectionError as error:
            raise ClusterError(_join_failure(address, error)) from None
        return False
    # Logical CPUs: engines and training ranks each hold one; on a small machine they take
    # turns with the real cores (the engine idles while ranks train).
    # address="local": a new cluster of our own even when `ray start` left one running on this
    # host (plain ray.init() would join that one, and refuse the resources given here).
    _init_keeping_signal_handlers(address="local", num_cpus=max(os.cpu_count() or 1, min_cpus), include_dashboard=False,
                                  object_store_memory=512 * 1024 * 1024, runtime_env=runtime_env,
                                  log_to_driver=True, configure_logging=False)
    return True


# The local cluster's processes, recorded by the driver that started them (see stop_leftovers).
LOCAL_PROCESSES = Path("logs") / "ray_processes.json"


def record_local_processes(run_dir: Path) -> None:
    """The processes of the local cluster this driver just started (GCS, raylet, agents), by PID
    and start time, for the next driver of the run."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            found.append([child.pid, child.create_time()])
        except psutil.Error:  # ended meanwhile
            continue
    runs.write_json_atomic(Path(run_dir) / LOCAL_PROCESSES, found)


def stop_leftovers(run_dir: Path) -> None:
    """Kill what an earlier driver of this run left running. A driver killed alone (an OOM kill,
    `kill -9` of its PID) takes its local cluster down except Ray's dashboard and runtime-env
    agents, which stay orphaned and ignore SIGTERM. A recorded process is killed only if its
    start time still matches (a PID can be reused); the run lock keeps a live driver's own safe."""
    import psutil

    path = Path(run_dir) / LOCAL_PROCESSES
    recorded = runs.read_scratch_json(path, [])
    stopped = []
    for entry in recorded if isinstance(recorded, list) else []:
        try:
            pid, started = entry
            process = psutil.Process(pid)
            if abs(process.create_time() - started) < 0.01 and process.status() != psutil.STATUS_ZOMBIE:
                process.kill()
                stopped.append(pid)
        except (psutil.Error, TypeError, ValueError):  # gone, or a damaged record
            continue
    if stopped:
        log.warning("stopped %d process(es) that an earlier driver of this run left running (pids %s)", len(stopped),
                    ", ".join(map(str, stopped)))
    path.unlink(missing_ok=True)


def _init_keeping_signal_handlers(**options) -> None:
    """ray.init, with Ray's logs routed through selfplay.console (actor lines to the run's log
    file, errors to the console) and the CLI's SIGINT/SIGTERM handlers kept: ray.init replaces
    the SIGTERM one with a sys.exit that ends in a core dump."""
    from selfplay import console

    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    console.route_library_loggers()
    try:
        ray.init(**options)
    except SystemExit as stop:  # Ray's SIGTERM handler, active inside ray.init: the CLI's handles it
        if stop.code == signal.SIGTERM and callable(handlers[signal.SIGTERM]):
            handlers[signal.SIGTERM](signal.SIGTERM, None)
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            for number, handler in handlers.items():
                if callable(handler):  # one a Python caller installed (the CLI's); else Ray's stays
                    signal.signal(number, handler)
    console.route_actor_output()


class ClusterError(RuntimeError):
    """The Ray cluster named by --ray-address cannot be joined."""


def _join_failure(address: str, error: ConnectionError) -> str:
    causes, cause = [], error
    while cause is not None:
        causes.append(str(cause))
        cause = cause.__cause__
    if any("InvalidAuthToken" in text or "Authentication" in text for text in causes):
        # Ray 2.60 heads want a token by default, but a driver joining by an explicit address
        # sends one only when told to (so a token never goes to an address by accident).
        return (f"--ray-address {address}: the cluster wants its auth token; set RAY_AUTH_MODE=token to send "
                f"~/.ray/auth_token (or RAY_AUTH_TOKEN), or start the cluster with RAY_AUTH_MODE=disabled")
    return f"--ray-address {address}: cannot join the Ray cluster ({str(error).strip().splitlines()[-1]})"


# The recipe fields that set each actor group's GPUs, for error messages.
GPU_FIELDS = {"generate": "generate.replicas x generate.num_gpus_per_replica",
              "annotate": "annotate.replicas x annotate.num_gpus",
              "evaluate": "evaluate.judge.replicas x evaluate.judge.num_gpus",
              "train": "train.world_size x train.num_gpus_per_rank"}


def gpu_needs(recipe) -> dict[str, float]:
    """GPUs each actor group of the recipe holds: generate, annotate, evaluate (its own judge), train.

    A function judge runs in the driver and holds none, whatever its num_gpus says.
    """
    def judge_gpus(judge):
        return judge.replicas * judge.num_gpus if judge is not None and judge.runs_in_actor else 0.0

    return {"generate": recipe.generate.replicas * recipe.generate.num_gpus_per_replica,
            "annotate": judge_gpus(recipe.annotate), "evaluate": judge_gpus(recipe.evaluate.judge),
            "train": recipe.train.world_size * recipe.train.num_gpus_per_rank}


def check_gpu_fit(needs: dict[str, float], total: float | None = None) -> None:
    """RecipeError naming the first actor group that needs more GPUs than the whole cluster has
    (Ray would otherwise leave it pending forever). `total`: the cluster's GPUs (default: Ray's)."""
    total = ray.cluster_resources().get("GPU", 0.0) if total is None else total
    for group, gpus in needs.items():
        if gpus > total:
            raise RecipeError(f"{GPU_FIELDS[group]} = {gpus:g} GPUs, but the Ray cluster has {total:g}")


def where_it_runs(actor) -> dict:
    """Run inside an actor (`actor.__ray_call__.remote(where_it_runs)`): its Ray node, host IP
    and PID, for the manifests' placement records."""
    return {"node": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}


def free_gpus() -> float:
    return ray.available_resources().get("GPU", 0.0)


def wait_for_free_gpus(gpus: float, timeout: float = 60.0) -> None:
    """Ray returns a killed actor's GPUs a moment after ray.kill; wait for them."""
    deadline = time.monotonic() + timeout
    while free_gpus() < gpus and time.monotonic() < deadline:
        time.sleep(0.2)


# -- CPUs, memory and tensor-parallel packing ----------------------------------------------
# Pure checks over a resource description, so they are unit-tested with fake dicts:
#   resources = {"total": ray.cluster_resources(), "nodes": [each alive node's Resources]}
# (`cluster_resources()` reads it from Ray). `check_fit(recipe, resources)` runs them all.

GIB = 1 << 30
CPU_FIELDS = ("generate.replicas x generate.tensor_parallel_size + one per model judge replica (annotate.replicas, "
              "evaluate.judge.replicas) + train.world_size")


def cluster_resources() -> dict:
    """The running cluster as `check_fit` reads it: totals and each alive node's resources."""
    return {"total": dict(ray.cluster_resources()),
            "nodes": [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]}


def cpu_needs(recipe) -> dict[str, float]:
    """Ray CPUs each actor group holds: one per vLLM tensor-parallel worker (a replica is a
    placement group of tensor_parallel_size bundles), one per model judge replica, one per rank."""
    def judge_cpus(judge):
        return float(judge.replicas) if judge is not None and judge.runs_in_actor else 0.0

    return {"generate": float(recipe.generate.replicas * recipe.generate.tensor_parallel_size),
            "annotate": judge_cpus(recipe.annotate), "evaluate": judge_cpus(recipe.evaluate.judge),
            "train": float(recipe.train.world_size)}


def check_cpu_fit(needs: dict[str, float], total: float) -> None:
    """Actors without GPUs are never released for another group, so at the train stage the
    engines, the judges and the ranks can all be alive: their CPUs together must fit."""
    together = sum(needs.values())
    if together > total:
        raise RecipeError(f"{CPU_FIELDS} = {together:g} CPUs held together at the train stage, but the Ray cluster "
                          f"has {total:g}")


def weights_gib(folder) -> float:
    """Size of a model folder's weight files (0 where the folder is not here, e.g. a hub id)."""
    from pathlib import Path

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return 0.0
    files = [f for f in folder.iterdir() if f.is_file() and f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / GIB


def replica_host_memory_gib(config, policy_weights_gib: float) -> float:
    """Host memory one CPU vLLM replica allocates at start-up: a KV cache of generate.kv_cache_gib
    per tensor-parallel worker, and the weights (split over the workers). The engine pool
    reserves it in the replica's placement group, so Ray places a replica only where it fits."""
    return config.tensor_parallel_size * config.kv_cache_gib + policy_weights_gib


def check_memory_fit(recipe, resources: dict, policy_weights_gib: float = 0.0) -> None:
    """A CPU vLLM replica allocates its KV cache (generate.kv_cache_gib) and its weights in host
    memory at start-up; they must fit Ray's memory resource, in total and each on one node.
    GPU replicas keep both on the GPU and are not counted. Clusters that declare no memory pass."""
    config = recipe.generate
    if config.num_gpus_per_replica > 0:
        return
    per_replica = replica_host_memory_gib(config, policy_weights_gib)
    kv_field = ("generate.kv_cache_gib" if config.tensor_parallel_size == 1
                else "generate.tensor_parallel_size x generate.kv_cache_gib")
    field = f"generate.replicas x ({kv_field} + the policy's weights)"
    total = resources.get("total", {}).get("memory")
    if total is not None and config.replicas * per_replica * GIB > total:
        raise RecipeError(f"{field} = {config.replicas} x {per_replica:.2f} GiB of host memory, but the Ray cluster "
                          f"has {total / GIB:.2f} GiB")
    largest = max((node["memory"] for node in resources.get("nodes", []) if "memory" in node), default=None)
    if largest is not None and per_replica * GIB > largest:
        raise RecipeError(f"{kv_field} + the policy's weights = {per_replica:.2f} GiB for one replica, "
                          f"but the largest Ray node has {largest / GIB:.2f} GiB of memory")


def attention_heads(config: dict) -> tuple[int, int] | None:
    """(attention heads, key/value heads) of a transformers config.json (a multimodal one keeps
    them in text_config); None where it does not say."""
    config = config.get("text_config") or config
    heads = config.get("num_attention_heads")
    if not isinstance(heads, int):
        return None
    kv_heads = config.get("num_key_value_heads")
    return heads, kv_heads if isinstance(kv_heads, int) else heads


def check_tensor_parallel_heads(tensor_parallel_size: int, config: dict, where: str = "the policy") -> None:
    """vLLM splits the attention heads over the tensor-parallel workers: tensor_parallel_size
    must divide them, and the key/value heads must divide it or be divisible by it (smaller KV
    head counts are replicated)."""
    heads = attention_heads(config)
    tp = tensor_parallel_size
    if heads is None or tp == 1:
        return
    attention, kv = heads
    if attention % tp:
        raise RecipeError(f"generate.tensor_parallel_size ({tp}) must divide the number of attention heads of "
                          f"{where} ({attention})")
    if (tp % kv if tp >= kv else kv % tp):
        raise RecipeError(f"generate.tensor_parallel_size ({tp}) and the key/value heads of {where} ({kv}) must "
                          f"divide one another")


def replicas_on_node(node_gpus: float, gpus_per_replica: float) -> int:
    """vLLM replicas of `gpus_per_replica` GPUs one node holds: fractions share a GPU (Ray
    packs them per GPU), whole numbers take whole GPUs of the same node."""
    whole = int(node_gpus + 1e-9)
    if gpus_per_replica < 1:
        return whole * int(1 / gpus_per_replica + 1e-9)
    return int(whole // gpus_per_replica)


def check_replica_packing(recipe, nodes: list[dict]) -> None:
    """A replica's tensor-parallel group cannot span nodes: each replica's GPUs and CPUs must be
    on one node, and the nodes together must hold every replica."""
    config = recipe.generate
    tp, gpus = config.tensor_parallel_size, config.num_gpus_per_replica
    if gpus > 0 and tp > 1 and gpus != tp:
        raise RecipeError(f"generate.num_gpus_per_replica ({gpus:g}) must equal generate.tensor_parallel_size "
                          f"({tp}) on GPUs: each tensor-parallel worker takes one GPU")
    if not nodes:
        return
    if tp > max(node.get("CPU", 0.0) for node in nodes):
        raise RecipeError(f"generate.tensor_parallel_size ({tp}) CPUs for one replica, but no Ray node has that many "
                          f"(a tensor-parallel group cannot span nodes)")
    if gpus <= 0:
        return
    largest = max(node.get("GPU", 0.0) for node in nodes)
    if gpus > largest:
        raise RecipeError(f"generate.num_gpus_per_replica = {gpus:g} GPUs for one replica, but the largest Ray node "
                          f"has {largest:g} (a tensor-parallel group cannot span nodes)")
    room = sum(replicas_on_node(node.get("GPU", 0.0), gpus) for node in nodes)
    if config.replicas > room:
        raise RecipeError(f"generate.replicas ({config.replicas}) x generate.num_gpus_per_replica ({gpus:g}): the Ray "
                          f"nodes hold {room} such replicas, each on one node")


def check_fit(recipe, resources: dict, policy_folder=None) -> None:
    """Everything about the recipe the cluster must hold, first failure as a RecipeError naming
    the recipe fields: GPUs per group, tensor-parallel heads and packing, CPUs, host memory.
    `policy_folder`: the policy's local folder (default policy.path; a tiny: one is skipped
    unless given); its config.json and weight sizes are read when it exists."""
    import json
    from pathlib import Path

    total = resources.get("total", {})
    check_gpu_fit(gpu_needs(recipe), total=total.get("GPU", 0.0))
    folder = Path(str(policy_folder if policy_folder is not None else recipe.policy.path)).expanduser()
    config_file = folder / "config.json"
    if not str(folder).startswith("tiny:") and config_file.is_file():
        check_tensor_parallel_heads(recipe.generate.tensor_parallel_size, json.loads(config_file.read_text()),
                                    f"the policy ({config_file})")
    check_replica_packing(recipe, resources.get("nodes", []))
    check_cpu_fit(cpu_needs(recipe), total.get("CPU", 0.0))
    check_memory_fit(recipe, resources, weights_gib(folder) if not str(folder).startswith("tiny:") else 0.0)


def check_cluster_fit(recipe, policy_folder=None) -> None:
    """`check_fit` against the running Ray cluster (the driver's pre-run check)."""
    check_fit(recipe, cluster_resources(), policy_folder)
