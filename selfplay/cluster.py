"""Ray start-up, and the recipe's GPU needs against the cluster.

Start-up: a local cluster sized for the recipe, or an existing cluster by address. Workers get
the environment they share (the model cache, offline hub flags) through the job's runtime_env,
so the same recipe runs on a laptop and on a cluster.

GPUs: vLLM engines, model judges and training ranks are separate Ray actors, and a typical
node cannot hold them all at once (the SPPO recipe: 8 engines + 1 PairRM + 8 ranks on 8 GPUs).
Each group must fit the cluster by itself, which `check_gpu_fit` says before any work; the
driver then releases whichever groups are in the way when the next one needs the GPUs.
"""

import os
import signal
import threading
import time

import ray

from selfplay.recipe import RecipeError

WORKER_ENV = ("SELFPLAY_CACHE", "TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def start_ray(address: str | None, min_cpus: int) -> None:
    if ray.is_initialized():
        return
    # The CPU engine's own settings (in-process vLLM, no torch.compile) are set by the engine
    # actor itself, only on CPU (selfplay.generate.engine): on CUDA vLLM keeps its defaults.
    env = {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    env.update({k: os.environ[k] for k in WORKER_ENV if k in os.environ})
    runtime_env = {"env_vars": env}
    if address:
        try:
            _init_keeping_signal_handlers(address=address, runtime_env=runtime_env, log_to_driver=True,
                                          configure_logging=False)
        except ConnectionError as error:
            raise ClusterError(_join_failure(address, error)) from None
        return
    # Logical CPUs: engines and training ranks each hold one; on a small machine they take
    # turns with the real cores (the engine idles while ranks train).
    _init_keeping_signal_handlers(num_cpus=max(os.cpu_count() or 1, min_cpus), include_dashboard=False,
                                  object_store_memory=512 * 1024 * 1024, runtime_env=runtime_env,
                                  log_to_driver=True, configure_logging=False)


def _init_keeping_signal_handlers(**options) -> None:
    """ray.init, with Ray's logs routed through selfplay.console (actor lines to the run's log
    file, errors to the console) and the CLI's SIGINT/SIGTERM handlers kept: ray.init replaces
    the SIGTERM one with a sys.exit that ends in a core dump."""
    from selfplay import console

    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    console.route_library_loggers()
    try:
        ray.init(**options)
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


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


# The recipe fields that set each actor group's GPUs, for error messages.
GPU_FIELDS = {"generate": "generate.replicas x generate.num_gpus_per_replica",
              "annotate": "annotate.num_gpus", "evaluate": "evaluate.judge.num_gpus",
              "train": "train.world_size x train.num_gpus_per_rank"}


def gpu_needs(recipe) -> dict[str, float]:
    """GPUs each actor group of the recipe holds: generate, annotate, evaluate (its own judge), train.

    A function judge runs in the driver and holds none, whatever its num_gpus says.
    """
    def judge_gpus(judge):
        return 0.0 if judge is None or judge.type == "function" else judge.num_gpus

    return {"generate": recipe.generate.replicas * recipe.generate.num_gpus_per_replica,
            "annotate": judge_gpus(recipe.annotate), "evaluate": judge_gpus(recipe.evaluate.judge),
            "train": recipe.train.world_size * recipe.train.num_gpus_per_rank}


def check_gpu_fit(needs: dict[str, float]) -> None:
    """RecipeError naming the first actor group that needs more GPUs than the whole cluster has
    (Ray would otherwise leave it pending forever)."""
    total = ray.cluster_resources().get("GPU", 0.0)
    for group, gpus in needs.items():
        if gpus > total:
            raise RecipeError(f"{GPU_FIELDS[group]} = {gpus:g} GPUs, but the Ray cluster has {total:g}")


def free_gpus() -> float:
    return ray.available_resources().get("GPU", 0.0)


def wait_for_free_gpus(gpus: float, timeout: float = 60.0) -> None:
    """Ray returns a killed actor's GPUs a moment after ray.kill; wait for them."""
    deadline = time.monotonic() + timeout
    while free_gpus() < gpus and time.monotonic() < deadline:
        time.sleep(0.2)
