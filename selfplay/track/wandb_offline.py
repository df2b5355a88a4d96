"""Read history rows and artifact records back from an offline W&B run file (`run-<id>.wandb`).

Offline files are a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records
(crc u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) carrying serialized
`wandb_internal_pb2.Record` messages, parsed here with W&B's own protobuf classes (W&B's CLI
reader, `wandb leet inspect --json`, prints the same records; the tests use both). The tracker
uses this on start to learn what W&B already holds; users can check an offline run before
syncing it.
"""

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def _records(data: bytes):
    position, pending = HEADER, b""
    while position + 7 <= len(data):
        block_left = BLOCK - (position % BLOCK)
        if block_left < 7:  # block trailer padding
            position += block_left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if position + 7 + length > len(data):  # torn by a crash while W&B was writing it
            return
        payload = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            position += BLOCK - (position % BLOCK) if position % BLOCK else 0
            continue
        if kind == 1:
            yield payload
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            yield pending + payload
            pending = b""


def read_records(run_file: str | Path, kind: str):
    """The file's `wandb_internal_pb2.Record`s of one record type ("history", "artifact", ...)."""
    from wandb.proto import wandb_internal_pb2

    for payload in _records(Path(run_file).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == kind:
            yield getattr(record, kind)


def read_history(run_file: str | Path) -> list[dict]:
    """The rows logged with `wandb.log`, in order, as {key: value} plus the W&B step as `_step`."""
    rows = []
    for history in read_records(run_file, "history"):
        row = {"_step": history.step.num}
        for item in history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def read_artifacts(run_file: str | Path) -> list[dict]:
    """The artifacts logged (and, with `use_after_commit`, used) in the file, in order:
    name, type, aliases, metadata, the reference URIs of its entries, and the two flags."""
    artifacts = []
    for record in read_records(run_file, "artifact"):
        artifacts.append({"name": record.name, "type": record.type, "aliases": list(record.aliases),
                          "metadata": json.loads(record.metadata or "{}"), "digest": record.digest,
                          "references": sorted(entry.ref for entry in record.manifest.contents if entry.ref),
                          "use_after_commit": record.use_after_commit, "user_created": record.user_created})
    return artifacts


def find_run_files(run_dir: str | Path) -> list[Path]:
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
