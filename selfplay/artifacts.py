"""The artifacts stages hand each other, and the schema helpers every stage shares.

An `Artifact` is one committed output of a stage (a parquet file, a policy folder) with the
digest its manifest records. Tables are read through `Artifact.table()`, which hashes the bytes
it reads anyway and compares them with the recorded sha256: a damaged input fails the stage
that reads it, with the file named, instead of training on garbage (`selfplay verify` checks
everything at once, and a rerun redoes the producer).

The helpers below are the shapes of those artifacts (samples grouped by prompt, a response's
token ids, a judgment row's win matrix). They live here, not in the stage that writes the
artifact, so no stage package imports another.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from selfplay.conversation import Prompt


class ArtifactDamaged(RuntimeError):
    """A committed artifact no longer hashes to its manifest's record."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    digest: str
    files: dict = field(default_factory=dict)  # the manifest's output_files entry (runs.fingerprint)
    metrics: dict = field(default_factory=dict)  # the metrics of the stage that made it (its manifest)

    def table(self) -> pa.Table:
        """The parquet table, after checking its bytes against the recorded sha256."""
        data = self.path.read_bytes()
        recorded = self.files.get(self.path.name)
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded[2]:
            raise ArtifactDamaged(f"{self.path}: its bytes no longer match the sha256 its manifest records (damaged "
                                  f"or edited); `selfplay resume` redoes the stage that made it")
        return pq.read_table(pa.BufferReader(data))


def iteration_folder(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / f"iter-{iteration:03d}"


def group_by_prompt(table: pa.Table) -> list[tuple[int, Prompt, list[dict]]]:
    """(prompt_id, prompt, samples sorted by sample_idx) in first-seen prompt order; the prompt
    is the conversation when the samples hold one (`messages`), else the text. A prompt the
    long-prompt rule skipped has no samples, so it has no group."""
    groups: dict[int, list[dict]] = {}
    for row in table.to_pylist():
        groups.setdefault(row["prompt_id"], []).append(row)
    return [(pid, rows[0].get("messages") or rows[0]["prompt"], sorted(rows, key=lambda r: r["sample_idx"]))
            for pid, rows in groups.items()]


def response_token_ids(tokenizer, text: str) -> list[int]:
    """A response as the policy would have sampled it: its tokens then the end-of-turn token."""
    return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def win_matrix_of(row: dict) -> np.ndarray:
    """The k x k win matrix of one judgments.parquet row."""
    k = row["num_samples"]
    return np.asarray(row["win_matrix"], dtype=np.float64).reshape(k, k)
