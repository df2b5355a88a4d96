"""Each model judge through the real pipeline (vLLM samples, judge in a Ray actor, DeepSpeed
training): the judgments artifact keeps the raw output and a consistent win matrix."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
SMALL = ["iterations=1", "prompts.per_iteration=8", "prompts.eval_size=4", "tracking.wandb=false",
         "annotate.function=null"]


@pytest.mark.parametrize("judge", [
    ["annotate.type=pairrm", "annotate.path=tiny:pairrm"],
    ["annotate.type=pairrm", "annotate.path=tiny:pairrm", "annotate.backend=llm-blender", "annotate.win_matrix=direct"],
    ["annotate.type=reward_model", "annotate.path=tiny:reward"],
], ids=["pairrm-native", "pairrm-llm-blender-direct", "reward-model"])
def test_model_judge_runs_in_the_pipeline(tmp_path, tiny_policy, judge):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "selfplay.cli", "run", "recipes/quickstart-cpu.yaml",
                             "--run-dir", str(run_dir), *SMALL, *judge], capture_output=True, text=True,
                            timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pq.read_table(run_dir / "iter-001/annotate/judgments.parquet").to_pylist()
    assert len(rows) == 8
    for row in rows:
        k = row["num_samples"]
        matrix = np.array(row["win_matrix"]).reshape(k, k)
        np.testing.assert_allclose(np.diag(matrix), 0.5)
        if "pairrm" in judge[0] + judge[1]:
            assert row["scores"] is None and len(row["pairwise_logits"]) == k * k
        else:
            assert row["pairwise_logits"] is None and len(row["scores"]) == k
            np.testing.assert_allclose(matrix + matrix.T, 1.0)      # Bradley-Terry is antisymmetric
    metrics = json.loads((run_dir / "iter-001/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["win_rate_vs_initial"] <= 1.0
