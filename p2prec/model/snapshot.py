"""One shard's content as bytes: for persistence and for full-shard catch-up.

Layout: ``MAGIC | u32 header length | orjson header | buffers``. The header names each table's
row count and dtype, the dense tensors, the shard version and the shard digest; ``restore``
recomputes the digest and refuses a snapshot whose digest does not match.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from blake3 import blake3

from p2prec.model.dense import tensor_hash
from p2prec.model.keyhash import shard_of, table_salt
from p2prec.model.layout import StoreLayout
from p2prec.model.rowhash import row_hashes
from p2prec.model.steplog import DenseValue
from p2prec.model.store import ParamStore
from p2prec.wire.messages import TableRows

MAGIC = b"P2PSNAP1"
_DTYPES = ("<i8", "<f4", "<f2")
_LEN = struct.Struct("<I")


class SnapshotError(ValueError):
    """Snapshot bytes that are corrupt, truncated, or of another layout."""


def snapshot_shard(store: ParamStore, shard: int, at: int | None = None) -> bytes:
    """Serialise the content of ``shard``, now or as of version ``at``. The bytes are canonical
    (keys sorted, fixed header order): equal content gives equal bytes, so a BLAKE3 of them
    signed by the trainer authenticates a snapshot served by any peer."""
    if at is not None and not store.can_read_at(shard, at):
        raise ValueError(f"shard {shard} cannot be read as of version {at}")
    version = int(store.vector.packed[shard]) if at is None else at
    buffers: list[bytes] = []
    header: dict[str, Any] = {
        "shard": shard,
        "version": version,
        "digest": 0,
        "tables": [],
        "dense": [],
    }
    if shard == store.layout.dense_shard:
        dense = store.dense_values(at)
        for name, value in sorted(dense.items()):
            arr = np.ascontiguousarray(value.array)
            header["dense"].append(
                {
                    "name": name,
                    "dtype": arr.dtype.str,
                    "shape": list(arr.shape),
                    "version": value.version,
                }
            )
            buffers.append(arr.tobytes())
        header["digest"] = sum(tensor_hash(n, v) for n, v in dense.items()) % (1 << 64)
    else:
        total = np.zeros(1, dtype=np.uint64)
        for name, rows in store.shard_rows(shard, at).items():
            header["tables"].append({"name": name, "n": len(rows), "dtype": rows.rows.dtype.str})
            buffers += [rows.keys.tobytes(), rows.versions.tobytes(), rows.rows.tobytes()]
            total += row_hashes(table_salt(name), rows.keys, rows.versions, rows.rows).sum(
                dtype=np.uint64
            )
        header["digest"] = int(total[0])
    head = orjson.dumps(header)
    return b"".join([MAGIC, _LEN.pack(len(head)), head, *buffers])


def strong_digest(snapshot: bytes | memoryview) -> bytes:
    """BLAKE3-256 of snapshot bytes (what ``Validated.shard_digests`` holds per shard)."""
    return blake3(snapshot).digest(32)


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.view = memoryview(data)
        self.offset = 0

    def take(self, count: int) -> memoryview:
        if count < 0 or self.offset + count > len(self.view):
            raise SnapshotError("snapshot truncated")
        part = self.view[self.offset : self.offset + count]
        self.offset += count
        return part

    def array(self, dtype: str, shape: tuple[int, ...]) -> npt.NDArray[Any]:
        if dtype not in _DTYPES or any(not isinstance(d, int) or d < 0 for d in shape):
            raise SnapshotError(f"bad array {dtype} {shape} in snapshot")
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        return np.frombuffer(self.take(count), dtype=dt).reshape(shape)


@dataclass(frozen=True, eq=False)
class ShardSnapshot:
    """A parsed, verified snapshot (arrays are read-only views of the bytes)."""

    shard: int
    version: int
    tables: dict[str, TableRows]
    dense: dict[str, DenseValue]


def restore_shard(store: ParamStore, data: bytes | memoryview) -> int:
    """Replace a shard's content with a snapshot; returns the shard number.

    The snapshot is parsed and its digest verified before the store changes: a bad snapshot
    raises ``SnapshotError`` and leaves the store as it was."""
    snap = parse_snapshot(store.layout, data)
    store.replace_shard(snap.shard, snap.version, snap.tables, snap.dense)
    return snap.shard


def parse_snapshot(layout: StoreLayout, data: bytes | memoryview) -> ShardSnapshot:
    try:
        return _parse(layout, data)
    except SnapshotError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError, orjson.JSONDecodeError) as exc:
        raise SnapshotError(f"bad snapshot: {exc}") from None


def _parse(layout: StoreLayout, data: bytes | memoryview) -> ShardSnapshot:
    reader = _Reader(data)
    if bytes(reader.take(len(MAGIC))) != MAGIC:
        raise SnapshotError("not a p2prec shard snapshot")
    (head_len,) = _LEN.unpack(reader.take(_LEN.size))
    header = orjson.loads(reader.take(head_len))
    shard, version = int(header["shard"]), int(header["version"])
    if not 0 <= shard < layout.n_shards or version < 0:
        raise SnapshotError(f"snapshot of shard {shard} at {version} outside this layout")
    tables = {}
    for entry in header["tables"]:
        name, n = str(entry["name"]), int(entry["n"])
        keys, versions = reader.array("<i8", (n,)), reader.array("<i8", (n,))
        tables[name] = TableRows(keys, versions, reader.array(entry["dtype"], (n, layout.dim)))
    dense = {
        str(e["name"]): DenseValue(reader.array(e["dtype"], tuple(e["shape"])), int(e["version"]))
        for e in header["dense"]
    }
    if reader.offset != len(reader.view):
        raise SnapshotError("trailing bytes after snapshot")
    snap = ShardSnapshot(shard, version, tables, dense)
    if _digest(layout, snap) != int(header["digest"]):
        raise SnapshotError(f"shard {shard}: content does not match the snapshot digest")
    return snap


def _digest(layout: StoreLayout, snap: ShardSnapshot) -> int:
    """The shard digest of the snapshot's content, checking it fits the layout."""
    if snap.shard == layout.dense_shard:
        if snap.tables:
            raise SnapshotError("the dense shard holds no table rows")
        return sum(tensor_hash(n, v) for n, v in snap.dense.items()) % (1 << 64)
    if snap.dense or set(snap.tables) - set(layout.tables):
        raise SnapshotError(f"snapshot tables {sorted(snap.tables)} not in this layout")
    total = np.zeros(1, dtype=np.uint64)
    for name, rows in snap.tables.items():
        salt = table_salt(name)
        if (shard_of(salt, rows.keys, layout.row_shards) != snap.shard).any():
            raise SnapshotError(f"snapshot of shard {snap.shard} holds rows of another shard")
        if np.unique(rows.keys).size != rows.keys.size or (rows.versions < 0).any():
            raise SnapshotError(f"snapshot table {name!r}: repeated keys or bad versions")
        hashes = row_hashes(salt, rows.keys, rows.versions, rows.rows.astype(layout.np_dtype))
        total += hashes.sum(dtype=np.uint64)
    return int(total[0])
