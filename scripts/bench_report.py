"""Shared by the bench_*.py scripts: write a script's section of docs/benchmarks.md, name the CPU."""

import platform
from pathlib import Path


def write_section(path: Path, section: str, lines: list[str]) -> None:
    """Replace `section` of the file (up to the next '## ' heading), keeping the rest."""
    old = path.read_text().splitlines() if path.exists() else ["# Benchmarks", ""]
    if section in old:
        start = old.index(section)
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
        new = old[:start] + lines + ([""] + old[end:] if end < len(old) else [])
    else:
        new = old + ([""] if old and old[-1] else []) + lines
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(new).rstrip("\n") + "\n")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
