"""`selfplay doctor`: the verdicts on hand-made measurements (no Ray, CUDA or full disk needed),
then the real command here: it passes on this CPU machine and fails, naming the check, on a
Ray address where nothing listens."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from selfplay.doctor import (
    PACKAGES,
    address_reachable,
    backend_check,
    disk_check,
    gpu_check,
    node_version_checks,
    package_checks,
    python_check,
)

GIB = 1 << 30


def test_python_version():
    assert python_check((3, 11, 7)).status == "ok"
    assert python_check((3, 9, 18)).status == "fail" and ">= 3.10" in python_check((3, 9, 18)).detail


def test_packages_missing_required_fail_optional_note():
    versions = {name: "1.0" for name in PACKAGES}
    assert all(check.status == "ok" for check in package_checks(versions))
    checks = {check.name: check for check in package_checks({**versions, "deepspeed": None, "llm-blender": None})}
    assert checks["deepspeed"].status == "fail" and "scripts/install.sh" in checks["deepspeed"].detail
    assert checks["llm-blender"].status == "note"           # only the llm-blender PairRM backend needs it
    assert checks["torch"].detail == "1.0"


@pytest.mark.parametrize("cuda, names, expect, status, text", [
    (False, [], 0, "note", "CPU runs only"),
    (True, ["H100"] * 8, 8, "ok", "8 x H100"),
    (True, ["H100", "H100", "A100"], 0, "ok", "2 x H100, 1 x A100"),
    (True, ["H100"] * 7, 8, "fail", "8 expected, CUDA sees 7"),
    (False, [], 1, "fail", "1 expected, CUDA sees none"),
])
def test_gpus(cuda, names, expect, status, text):
    check = gpu_check(cuda, names, expect)
    assert check.status == status and text in check.detail


@pytest.mark.parametrize("gloo, nccl, cuda, error, backend, status, text", [
    (True, False, False, None, "gloo", "ok", "DeepSpeed uses gloo"),
    (True, True, True, None, "nccl", "ok", "gloo and nccl available"),
    (False, False, False, None, "gloo", "fail", "gloo is not available"),
    (True, False, True, None, "nccl", "fail", "NCCL is not available"),
    (True, True, True, None, "gloo", "fail", "DeepSpeed picked 'gloo'"),
    (True, False, False, "RuntimeError: boom", "gloo", "fail", "all-reduce failed (RuntimeError: boom)"),
    (True, False, False, None, None, "fail", "DeepSpeed does not import"),
])
def test_distributed_backends(gloo, nccl, cuda, error, backend, status, text):
    check = backend_check(gloo, nccl, cuda, error, backend)
    assert check.status == status and text in check.detail


def test_disk():
    assert disk_check(Path("/runs"), 30 * GIB, 20).status == "ok"
    low = disk_check(Path("/runs"), 19 * GIB, 20)
    assert low.status == "fail" and "19.0 GiB free at /runs, below 20 GiB" in low.detail


def test_address_reachable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    assert address_reachable(f"127.0.0.1:{port}") is None
    listener.close()
    assert "nothing answers at" in address_reachable(f"127.0.0.1:{port}")
    assert "not host:port" in address_reachable("my-head-node")
    assert address_reachable("auto") is None                 # left to ray.init


def test_node_versions_name_the_broken_node():
    here = {"torch": "2.13.0", "vllm": "0.32.0"}
    checks = node_version_checks(here, {"10.0.0.1": {**here, "gpus": 8},
                                        "10.0.0.2": {"torch": "2.12.0", "vllm": "0.32.0", "gpus": 8},
                                        "10.0.0.3": "GetTimeoutError: timed out"})
    by_node = {check.name: check for check in checks}
    assert by_node["node 10.0.0.1"].status == "ok" and "8 GPUs" in by_node["node 10.0.0.1"].detail
    assert by_node["node 10.0.0.2"].status == "fail" and "torch 2.12.0 (here 2.13.0)" in by_node["node 10.0.0.2"].detail
    assert by_node["node 10.0.0.3"].status == "fail" and "did not answer" in by_node["node 10.0.0.3"].detail


def doctor(*args):
    return subprocess.run([sys.executable, "-m", "selfplay.cli", "doctor", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_doctor_passes_here(tmp_path):
    result = doctor("--run-dir", str(tmp_path / "runs"), "--min-free-gib", "0.001")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("python", "torch", "vllm", "transformers", "deepspeed", "ray", "wandb", "gpus", "torch.distributed",
                 "tiny model", "disk", "ray cluster"):
        assert any(line.split(":")[0].split(maxsplit=1)[1] == name for line in lines if ":" in line), name
    assert not [line for line in lines if line.startswith("FAIL")]
    assert lines[-1] == "selfplay doctor: all checks passed"


def test_doctor_fails_on_a_dead_ray_address(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # a port nothing listens on
    result = doctor("--run-dir", str(tmp_path), "--min-free-gib", "0.001", "--ray-address", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"FAIL  ray cluster: --ray-address 127.0.0.1:{port}: nothing answers" in result.stdout
    assert result.stdout.splitlines()[-1] == "selfplay doctor: 1 failed (ray cluster)"
