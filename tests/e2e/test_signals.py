"""Clean stops: SIGINT (Ctrl-C) and SIGTERM sent to the driver during generate and during
train stop it within seconds, with exit code 130 / 143 and one line that names what was
interrupted and the `selfplay resume` command; no traceback, and the driver's Ray cluster is
gone. Resuming after two stops (SIGINT in iteration 1's generate, SIGTERM in the resumed driver's
iteration 2 train, whose ranks it kept from iteration 1) ends bit-identical to an unbroken run.
Both signals take the same path (cli.py turns SIGTERM into the KeyboardInterrupt of SIGINT), so
two stops cover each signal and each stage."""

import os
import signal
import time

import psutil
import pytest

from fault_runs import cli, driver_session, final_state, start_cli, start_run, wait_for

pytestmark = pytest.mark.slow
STOP_DEADLINE = 120  # seconds from the signal to the driver's exit; ~3-10 s measured on 2 busy cores


def stop_with(process, marker, signum, delay: float = 0.0) -> tuple[str, float]:
    """Send `signum` to the driver process only (not its group, as a service manager's SIGTERM
    or a parent's Ctrl-C forwarding would) `delay` s after `marker` exists; its stderr and stop seconds."""
    wait_for(process, marker)
    time.sleep(delay)
    cluster = psutil.Process(process.pid).children(recursive=True)   # its local Ray cluster and actors
    sent = time.monotonic()
    os.kill(process.pid, signum)
    stderr = process.communicate(timeout=STOP_DEADLINE)[1]
    seconds = time.monotonic() - sent
    _, alive = psutil.wait_procs(cluster, timeout=30)
    assert not alive, f"left running after the driver stopped: {[p.pid for p in alive]}"
    return stderr, seconds


def assert_clean_stop(process, stderr: str, signum, iteration: int, stage: str, run_dir) -> None:
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "selfplay resume" in line]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0] == (f"selfplay: interrupted by {signal.Signals(signum).name} during iteration {iteration} stage "
                        f"{stage}; finished stages are kept: `selfplay resume {run_dir}` continues")
    assert stderr.strip().splitlines()[-1] == lines[0]   # nothing after it
    stage_dir = run_dir / f"iter-{iteration:03d}" / stage
    assert not (stage_dir / "manifest.json").exists()   # the interrupted stage does not count as done


def test_sigint_and_sigterm_during_generate_and_train_stop_cleanly_then_resume_matches(tmp_path, small_unbroken_run):
    run_dir = tmp_path / "stopped"
    stops = [(signal.SIGINT, 1, "generate", "iter-001/generate.tmp"),
             (signal.SIGTERM, 2, "train", "iter-002/train.checkpoints/latest")]
    timings = []
    for number, (signum, iteration, stage, marker) in enumerate(stops):
        starting = start_run(run_dir, hold="1:generate") if number == 0 else start_cli("resume", str(run_dir))
        with driver_session(starting) as process:
            stderr, seconds = stop_with(process, run_dir / marker, signum)
        assert_clean_stop(process, stderr, signum, iteration, stage, run_dir)
        timings.append(f"{signal.Signals(signum).name} in iteration {iteration} {stage}: {seconds:.1f} s")
    print("signal to exit: " + "; ".join(timings))
    status = cli("status", str(run_dir)).stdout
    assert "iter   2  train          interrupted" in status, status
    result = cli("resume", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "iter 2 generate  done earlier, skipped" in result.stderr   # what finished before a stop is kept
    # the engine's and trainer's own lines go to the run's log file, not to the console
    assert "VLLMEngine pid=" not in result.stderr + result.stdout and "TrainerRank pid=" not in result.stderr
    log = (run_dir / "logs/driver.log").read_text()
    assert "(VLLMEngine pid=" in log and "(TrainerRank pid=" in log and "iter 2 train     running" in log
    resumed = final_state(run_dir)
    assert resumed["weights"] == small_unbroken_run["weights"]          # bit-identical final policy
    assert resumed["metrics"] == small_unbroken_run["metrics"]
    assert resumed["pairs"] == small_unbroken_run["pairs"]


def test_sigterm_while_ray_starts_is_a_clean_stop_that_does_not_advise_resume(tmp_path):
    """Issue 19 finding 12: inside ray.init, Ray's own SIGTERM handler ran (sys.exit(15): exit 15,
    nothing printed). Sent while the local cluster starts (just after the run's log file is made,
    before run.json), SIGTERM stops the driver with 143 and one line; there is no run to resume yet."""
    run_dir = tmp_path / "early"
    with driver_session(start_run(run_dir)) as process:
        stderr, _ = stop_with(process, run_dir / "logs/driver.log", signal.SIGTERM, delay=0.5)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == ("selfplay: interrupted by SIGTERM during start-up; no run was recorded "
                                               "yet: run the same command again to start it"), stderr[-3000:]
    assert not (run_dir / "run.json").exists()
