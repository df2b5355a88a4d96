"""The run directory's names, declared once: each stage's folder and the artifacts stages commit.

A committed artifact lives at `<run>/iter-NNN/<stage>/<artifact>`. The stage classes take their
`name` and `produces` from here, and what reads a run without running it (lineage and status,
the compare report, W&B artifacts, the CLI's summary) names stages and artifacts through these
constants. Each value is part of every existing run's layout: renaming one strands the runs
made before it.
"""

# -- stages ----------------------------------------------------------------------------------
BASELINE = "baseline"              # iteration 0: the initial policy's eval samples
REFERENCE_SOUP = "reference-soup"  # iteration 0: SALSA's weight-averaged reference
REFERENCE_SAMPLES = "reference-samples"  # iteration 0: the initial policy's responses that PAR shapes against
SEED_PAIRS = "seed-pairs"          # iteration 0: the labelled seed pairs, tokenized
SEED = "seed"                      # iteration 0: the policy trained on the seed pairs
MAGPIE = "magpie"                  # the iteration's training prompts, written by a model (prompts.source magpie)
GENERATE = "generate"
ANNOTATE = "annotate"
PAIRS = "pairs"
TRAIN = "train"
EVAL_GEN = "eval-gen"              # the trained policy's eval samples
EVALUATE = "evaluate"

# -- artifacts: a stage's committed outputs --------------------------------------------------
PROMPTS_PARQUET = "prompts.parquet"  # Magpie's kept instructions: the iteration's training prompts
SAMPLES_PARQUET = "samples.parquet"
JUDGMENTS_PARQUET = "judgments.parquet"
PAIRS_PARQUET = "pairs.parquet"
POLICY_FOLDER = "policy"           # HF safetensors
HISTORY_JSONL = "history.jsonl"    # one row per optimizer step
TRAIN_PAIRS_PARQUET = "train_pairs.parquet"  # the pairs a curriculum stage trained on (Curry-DPO)
EVAL_PARQUET = "eval.parquet"
COMPARISONS_PARQUET = "comparisons.parquet"
METRICS_JSON = "metrics.json"
