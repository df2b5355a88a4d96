"""Read the history back from an offline W&B run file (`run-<id>.wandb`).

W&B's own readers need the network; offline files are a LevelDB-style log: a 7-byte header,
then 32 KiB blocks of records (crc u32, length u16, type u8: 1 full, 2 first, 3 middle,
4 last) carrying serialized `wandb_internal_pb2.Record` messages. Used by tests and by users
who want to check an offline run before syncing it.
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


def read_history(run_file: str | Path) -> list[dict]:
    """The rows logged with `wandb.log`, in order, as {key: value} plus the W&B step as `_step`."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for payload in _records(Path(run_file).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            row = {"_step": record.history.step.num}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def find_run_files(run_dir: str | Path) -> list[Path]:
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
