"""The launch scripts against real Ray clusters on this machine.

`scripts/launch_ray_job.sh` (and its one-line refusals of bad command lines): a Ray head is
started here as a user starts one (`ray start --head --block`, its environment's bin/ on PATH,
token auth on with its own token file through RAY_AUTH_TOKEN_PATH), with every port chosen
free so that it does not meet the other Ray clusters on this host. The script is then run as a
user runs it, from the repository, with the token file but no RAY_AUTH_MODE: one iteration of
the quickstart recipe must finish as a Ray job, run by the uploaded copy of the repository
(no .venv/ or runs/ in it; .git/ in it, so the manifests name the commit).

`scripts/slurm_ray.sbatch`, as far as a machine without Slurm allows: `srun` and `scontrol` are
stand-ins that run the command here (each `ray start` with free ports of its own), so the
script's own logic runs for real: two Ray nodes started and awaited, the driver run against
them with the token, and the cluster stopped by the script when the driver is done.

Only this test's Ray processes are stopped: SIGTERM to the `ray start` process it started (it
drains and stops its node), then SIGKILL to what is left of it, by the process ids recorded
before, or of the Slurm script's session, by session id. Never `ray stop`, which stops every
cluster on the host. Every wait has a deadline.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "launch_ray_job.sh"
VENV_BIN = str(Path(sys.executable).parent)
HEAD_START_DEADLINE = 120   # seconds for the dashboard to answer (5-20 s on 2 busy cores)
HEAD_STOP_DEADLINE = 60
JOB_TIMEOUT = 900           # each run takes 40-90 s on 2 busy cores; a deadline, not an estimate
RUN = ["iterations=1", "prompts.per_iteration=8", "prompts.eval_size=4", "train.epochs=1", "tracking.wandb=false"]
# Ray's auth variables are set per process below; none leaks in from the shell running pytest.
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def user_env(**changes) -> dict:
    """The environment of a user whose selfplay environment is active (its bin/ first on PATH)."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env.update(changes)
    return env


def dashboard_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=2)
    except urllib.error.HTTPError:
        return True                 # 401 without the token: the dashboard is up
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def ray_head(tiny_policy):
    """A loopback Ray head with the job API, token auth on; yields its dashboard URL and dirs."""
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing is not None:
        pytest.fail(f"`ray job submit` needs the Ray dashboard, which needs ray[default] ({missing})")
    # Ray's unix sockets live under the temp dir: a short path (the limit is ~107 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="sp-ray-", dir="/tmp"))
    token_file = temp_dir / "auth_token"
    token_file.write_text(os.urandom(32).hex())
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics = free_ports(7)
    command = [f"{VENV_BIN}/ray", "start", "--head", "--block", "--disable-usage-stats", "--num-cpus", "4",
               "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--include-dashboard", "true",
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
               "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
               "--metrics-export-port", str(metrics), "--temp-dir", str(temp_dir / "ray")]
    log = (temp_dir / "head.log").open("w")
    head = subprocess.Popen(command, cwd=temp_dir, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                            env=user_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file)))
    url = f"http://127.0.0.1:{dashboard}"
    try:
        end = time.monotonic() + HEAD_START_DEADLINE
        while not dashboard_answers(url):
            assert head.poll() is None, f"ray start exited: {(temp_dir / 'head.log').read_text()[-3000:]}"
            assert time.monotonic() < end, f"the dashboard did not answer within {HEAD_START_DEADLINE} s"
            time.sleep(1)
        yield {"url": url, "token_file": token_file, "ray_dir": temp_dir / "ray"}
    finally:
        stop_head(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_head(head: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` (it drains its node and stops what it started); then SIGKILL
    to every process of its session still alive, including workers in process groups of their
    own and job drivers in sessions of their own (found as descendants before the SIGTERM)."""
    try:
        ours = [head.pid] + [child.pid for child in psutil.Process(head.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        ours = [head.pid]
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=HEAD_STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in ours:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    head.wait(timeout=HEAD_STOP_DEADLINE)


def test_the_upload_leaves_out_the_environment_and_runs_but_keeps_the_code_and_git():
    """The patterns `ray job submit --working-dir` applies (.gitignore, .rayignore), checked on
    paths that need not exist here: a run folder is left out whole, not walked file by file."""
    from ray._private.runtime_env.packaging import get_excludes_from_ignore_files

    excludes = get_excludes_from_ignore_files(REPO, include_gitignore=True)

    def left_out(relative: str) -> bool:
        return any(exclude(REPO / relative) for exclude in excludes)

    for path in (".venv", "runs", "runs/sppo/iter-001/train/policy/model.safetensors", "wandb", ".ruff_cache",
                 "selfplay/__pycache__", "selfplay.egg-info"):
        assert left_out(path), path
    for path in (".git", "selfplay/runs.py", "selfplay/cli.py", "recipes/data/quickstart_prompts.jsonl",
                 "scripts/launch_ray_job.sh"):
        assert not left_out(path), path


def launch(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env or user_env())


@pytest.mark.slow
def test_a_recipe_submitted_as_a_ray_job_runs_to_the_end(ray_head, tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    # the token file is where a user's is; RAY_AUTH_MODE is left unset, as in a user's shell
    result = launch(ray_head["url"], "recipes/quickstart-cpu.yaml", "--run-dir", str(run_dir), *RUN,
                    env=user_env(RAY_AUTH_TOKEN_PATH=str(ray_head["token_file"])), timeout=JOB_TIMEOUT)
    print(f"launch_ray_job.sh, one iteration: {time.monotonic() - start:.1f} s")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    manifest = json.loads((run_dir / "iter-001" / "evaluate" / "manifest.json").read_text())
    assert manifest["status"] == "done"
    # the uploaded copy kept .git/: the driver names the commit it ran
    head_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert manifest["code_version"].split("+")[0] == head_commit

    packages = ray_head["ray_dir"] / "session_latest" / "runtime_resources" / "working_dir_files"
    uploads = [path for path in packages.glob("_ray_pkg_*") if path.is_dir()]
    assert len(uploads) == 1, uploads
    upload = uploads[0]
    assert (upload / "selfplay" / "cli.py").is_file() and (upload / "recipes" / "quickstart-cpu.yaml").is_file()
    assert (upload / ".git").is_dir()
    for left_out in (".venv", "runs", "wandb", ".ruff_cache"):
        assert not (upload / left_out).exists(), f"{left_out}/ was uploaded with the working dir"
    size = sum(path.stat().st_size for path in upload.rglob("*") if path.is_file())
    assert size < 100 << 20, f"the upload holds {size >> 20} MiB"


@pytest.mark.parametrize("args, message", [
    (["http://127.0.0.1:8265", "recipes/quickstart-cpu.yaml"], "--run-dir is required"),
    (["http://127.0.0.1:8265", "recipes/quickstart-cpu.yaml", "--run-dir", "runs/x"], "--run-dir runs/x: must be absolute"),
    (["http://127.0.0.1:8265", "recipes/quickstart-cpu.yaml", "--run-dir=runs/x"], "--run-dir runs/x: must be absolute"),
    (["http://127.0.0.1:8265", "recipes/nope.yaml", "--run-dir", "/shared/x"], "RECIPE: recipes/nope.yaml is not a file"),
    (["127.0.0.1:6379", "recipes/quickstart-cpu.yaml", "--run-dir", "/shared/x"], "DASHBOARD_URL: the head's dashboard"),
    (["http://127.0.0.1:8265"], "usage: bash scripts/launch_ray_job.sh DASHBOARD_URL RECIPE"),
])
def test_a_bad_command_line_is_refused_in_one_line_before_submitting(args, message):
    result = launch(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert result.stdout == ""


SRUN = """#!/usr/bin/env bash
# srun on one machine: drop srun's own options and run the command here. Every node of the
# simulated allocation is a raylet on this host: each `ray start` gets free ports of its own.
while [ $# -gt 0 ]; do
  case $1 in
    -w|--nodelist) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
if [ "$1" = ray ] && [ "${2:-}" = start ]; then
  read -r agent grpc runtime_env metrics client dashboard < <(python "$SHIMS/free_ports.py" 6)
  extra=(--num-cpus 2 --temp-dir "$SHIM_RAY_TEMP" --dashboard-agent-listen-port "$agent"
         --dashboard-agent-grpc-port "$grpc" --runtime-env-agent-port "$runtime_env" --metrics-export-port "$metrics")
  [[ " $* " == *" --head "* ]] && extra+=(--ray-client-server-port "$client" --dashboard-port "$dashboard")
  exec "$@" "${extra[@]}"
fi
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
# `scontrol show hostnames LIST`: the simulated allocation's node names, one a line
printf '%s\\n' $SHIM_NODES
"""
FREE_PORTS = """import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for sock in sockets:
    sock.bind(("127.0.0.1", 0))
print(*(sock.getsockname()[1] for sock in sockets))
"""


def make_shims(folder: Path) -> Path:
    folder.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("free_ports.py", FREE_PORTS)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def session_pids(session: int) -> list[int]:
    """The processes of one session (the one the test started), found by session id."""
    pids = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == session:
                pids.append(pid)
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_the_slurm_script_runs_a_recipe_on_the_cluster_it_starts_and_stops_it(tiny_policy, tmp_path):
    shims = make_shims(tmp_path / "shims")
    temp_dir = Path(tempfile.mkdtemp(prefix="sp-slurm-", dir="/tmp"))   # short: Ray's socket paths
    run_dir = tmp_path / "run"
    env = user_env(SLURM_JOB_NODELIST="node[1-2]", SHIM_NODES="node1 node2", SHIMS=str(shims),
                   SHIM_RAY_TEMP=str(temp_dir / "ray"), SELFPLAY_RAY_PORT=str(free_ports(1)[0]),
                   RAY_AUTH_TOKEN=os.urandom(32).hex())
    env["PATH"] = str(shims) + os.pathsep + env["PATH"]
    start = time.monotonic()
    job = subprocess.Popen(["bash", "scripts/slurm_ray.sbatch", "recipes/quickstart-cpu.yaml", "--run-dir",
                            str(run_dir), *RUN], cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env)
    try:
        output, _ = job.communicate(timeout=JOB_TIMEOUT)
        print(f"slurm_ray.sbatch, two nodes, one iteration: {time.monotonic() - start:.1f} s")
        assert job.returncode == 0, output[-4000:]
        assert json.loads((run_dir / "iter-001" / "evaluate" / "manifest.json").read_text())["status"] == "done"
        # the script waited for both nodes before the run, and stopped them after it
        # two `ray start` steps (head, worker) came up before the run, and the EXIT trap stopped both
        assert output.count("Ray runtime started.") == 2, output[-4000:]
        assert output.count("received SIGTERM") == 2, output[-4000:]
        end = time.monotonic() + HEAD_STOP_DEADLINE
        while session_pids(job.pid) and time.monotonic() < end:
            time.sleep(1)
        assert not session_pids(job.pid), "the script left its Ray nodes running"
    finally:
        for pid in session_pids(job.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        job.wait(timeout=HEAD_STOP_DEADLINE)
        shutil.rmtree(temp_dir, ignore_errors=True)
