"""Append-only JSON-lines records that a crash cannot corrupt.

Each line is one JSON object written by a single append; a line torn by a crash (no final
newline) is dropped when the file is read, and the file is rewritten without it (atomically),
so the next append starts on a fresh line. Used for the tracker's small local records
(`wandb_artifacts.jsonl`, `wandb_examples.jsonl`); metrics.jsonl has its own block rules.
"""

import json
import os
from pathlib import Path


def read_journal(path: Path) -> list[dict]:
    """The file's complete lines ([] when it does not exist); a torn last line is removed."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    lines = [line for line in text.splitlines(keepends=True) if line.endswith("\n")]
    if text and not text.endswith("\n"):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, path)
    return [json.loads(line) for line in lines]


def append_journal(path: Path, entry: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(entry, default=float) + "\n")
