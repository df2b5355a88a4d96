"""PAR shaping through the real pipeline (vLLM CPU, DeepSpeed gloo, Ray), via the `selfplay`
command: recipes/par-cpu.yaml (2 SPPO iterations, the letter-'e' count judge shaped by PAR
against 2 reference responses per training prompt of the initial policy).

One run, killed (its whole session, by PID) while iteration 2 annotates and resumed: the
reference responses sampled in iteration 0 are reused, not resampled; the annotate stages saw
the shaped scores, each recomputable from the raw ones; and the policy learns the judge's
preference, a bootstrap 95% lower bound over 56 eval prompts above 0.5."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from selfplay.annotate.shaping import shape
from selfplay.evaluate.bootstrap import bootstrap_interval

from fault_runs import cli, driver_session, kill_when, start_cli

pytestmark = pytest.mark.slow
SETTINGS = ["prompts.eval_size=56", "tracking.wandb=false"]


def manifest(run_dir, iteration, stage):
    return json.loads((run_dir / f"iter-{iteration:03d}/{stage}/manifest.json").read_text())


@pytest.fixture(scope="module")
def par_run(tmp_path_factory, tiny_policy):
    run_dir = tmp_path_factory.mktemp("par") / "run"
    with driver_session(start_cli("run", "recipes/par-cpu.yaml", "--run-dir", str(run_dir), *SETTINGS,
                                  hold="2:annotate")) as process:
        kill_when(process, run_dir / "iter-002/annotate.tmp")
    before = manifest(run_dir, 0, "reference-samples")
    resumed = cli("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir, before, resumed.stderr


def test_the_reference_responses_are_sampled_once_and_reused_on_resume(par_run):
    run_dir, before, log = par_run
    after = manifest(run_dir, 0, "reference-samples")
    assert after == before  # not rerun: the same manifest, same start time and digests
    assert "reference-samples done earlier, skipped" in log
    assert not list(run_dir.glob("superseded/**/reference-samples"))
    references = pq.read_table(run_dir / "iter-000/reference-samples/samples.parquet").to_pylist()
    trained = {row["prompt_id"] for t in (1, 2)
               for row in pq.read_table(run_dir / f"iter-{t:03d}/generate/samples.parquet").to_pylist()}
    assert {row["prompt_id"] for row in references} == trained  # every training prompt, 2 responses each
    assert len(references) == 2 * len(trained)
    for t in (1, 2):
        assert manifest(run_dir, t, "annotate")["inputs"]["reference_samples"] == before["outputs"]["samples.parquet"]


def test_pairs_see_the_shaped_scores_and_the_raw_ones_are_kept(par_run):
    run_dir, _, _ = par_run
    for t in (1, 2):
        rows = pq.read_table(run_dir / f"iter-{t:03d}/annotate/judgments.parquet").to_pylist()
        for row in rows:
            raw, reference = np.array(row["raw_scores"]), np.array(row["reference_scores"])
            assert len(reference) == 2 and np.all(raw == np.round(raw))  # the letter count itself
            assert row["scores"] == pytest.approx(shape("par", raw, reference).tolist())
            assert all(0 < s < 1 for s in row["scores"])
        metrics = manifest(run_dir, t, "annotate")["metrics"]
        assert metrics["reference_responses"] == 2 * len(rows)
        assert 0 < metrics["mean_shaped_score"] < 1


def test_the_policy_learns_the_judges_preference_through_par(par_run):
    run_dir, _, _ = par_run
    rates = pq.read_table(run_dir / "iter-002/evaluate/eval.parquet").column("win_rate").to_pylist()
    lower = bootstrap_interval(rates, resamples=2000, seed=0)[0]
    print(f"PAR: final win rate {np.mean(rates):.3f} over {len(rates)} eval prompts, lower bound {lower:.3f}")
    assert len(rates) == 56 and lower > 0.5
