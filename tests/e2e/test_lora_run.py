"""recipes/lora-cpu.yaml end to end (real vLLM, DeepSpeed, Ray): 2 SPPO iterations training a
LoRA adapter (train.lora) raise the win rate against the initial policy under the function
judge's preference (bootstrap 95% lower bound of the final win rate above 0.5), and the saved
policies are the base with the adapter merged: only the adapted projections moved."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_policy):
    run_dir = tmp_path_factory.mktemp("lora") / "lora-cpu"
    # 24 eval prompts: what 2 x 32 training prompts leave of the 120 and fit a short eval
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "run", "recipes/lora-cpu.yaml", "--run-dir",
                             str(run_dir), "prompts.eval_size=24"], capture_output=True, text=True, timeout=900,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_a_lora_run_learns_the_judges_preference(lora_run):
    import pyarrow.parquet as pq

    from selfplay.evaluate.bootstrap import bootstrap_interval

    win_rates = [json.loads((lora_run / f"iter-{t:03d}/evaluate/metrics.json").read_text())["win_rate_vs_initial"]
                 for t in (1, 2)]
    final = pq.read_table(lora_run / "iter-002/evaluate/eval.parquet").column("win_rate").to_pylist()
    lower, upper = bootstrap_interval(final, resamples=2000, seed=0)
    print(win_rates, f"final 95% interval over {len(final)} prompts: ({lower:.3f}, {upper:.3f})")
    assert lower > 0.5, (win_rates, lower)
    train = json.loads((lora_run / "iter-002/train/manifest.json").read_text())
    assert train["config"]["lora"]["r"] == 8  # the adapter's settings are in the stage's digest


def test_the_saved_policy_is_the_base_with_the_adapter_merged(lora_run, tiny_policy):
    from safetensors.torch import load_file

    initial = load_file(tiny_policy / "model.safetensors")
    trained = load_file(lora_run / "iter-002/train/policy/model.safetensors")
    assert trained.keys() == initial.keys()
    moved = {k for k in initial if not (trained[k] == initial[k]).all()}
    assert moved and all(k.endswith("proj.weight") for k in moved), sorted(moved)
    assert not any("embed" in k or "norm" in k for k in moved)
