"""One shard's content as bytes: for persistence and for full-shard catch-up.

Layout: ``MAGIC | u32 header length | orjson header | buffers``. The header names each table's
row count and dtype, the dense tensors, the shard version and the shard digest; ``restore``
recomputes the digest and refuses a snapshot whose digest does not match.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
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
from p2prec.model.scan import ShardScan
from p2prec.model.steplog import DenseValue
from p2prec.model.store import ParamStore, ShardRows
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
    return dict(snapshot_shards(store, [shard], at))[shard]


def snapshot_shards(
    store: ParamStore, shards: Sequence[int], at: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """``snapshot_shard`` of many shards, reading each table's index once."""
    for shard, parts in snapshot_parts(store, shards, at):
        yield shard, b"".join(parts)


def strong_digests(
    store: ParamStore, shards: Sequence[int], at: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """``strong_digest(snapshot_shard(...))`` of many shards, hashing the parts of each
    snapshot without joining them (no copy of the shard)."""
    for shard, parts in snapshot_parts(store, shards, at):
        hasher = blake3()
        for part in parts:
            hasher.update(part)
        yield shard, hasher.digest(32)


Part = bytes | memoryview


def scanned_strong_digests(
    store: ParamStore, scan: ShardScan, shards: Sequence[int]
) -> Iterator[tuple[int, bytes]]:
    """``strong_digests`` of row shards read through ``scan`` (as of ``scan.at``); the caller
    checks ``scan.readable`` first."""
    for shard in shards:
        hasher = blake3()
        for part in scanned_snapshot_parts(store, scan, shard):
            hasher.update(part)
        yield shard, hasher.digest(32)


def scanned_snapshot_parts(store: ParamStore, scan: ShardScan, shard: int) -> list[Part]:
    """The parts of ``snapshot_shard(store, shard, scan.at[shard])`` for a row shard read
    through ``scan`` (the caller checks ``scan.readable`` first). The parts are views of fresh
    arrays: a worker thread may write them while the store changes."""
    version = int(scan.at[shard])
    return _rows_parts(shard, version, store.rows_from_scan(scan, shard))


def parts_nbytes(parts: Sequence[Part]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)


def snapshot_parts(
    store: ParamStore, shards: Sequence[int], at: int | None = None
) -> Iterator[tuple[int, list[Part]]]:
    """The bytes of each shard's snapshot as a list of parts (views of fresh arrays)."""
    for shard in shards:
        if at is not None and not store.can_read_at(shard, at):
            raise ValueError(f"shard {shard} cannot be read as of version {at}")
    dense_shard = store.layout.dense_shard
    row_shards = [s for s in shards if s != dense_shard]
    by_shard = store.rows_of_shards(row_shards, at) if row_shards else {}
    for shard in shards:
        version = int(store.vector.packed[shard]) if at is None else at
        if shard == dense_shard:
            yield shard, _dense_parts(store, shard, version, at)
        else:
            yield shard, _rows_parts(shard, version, by_shard[shard])


def _rows_parts(shard: int, version: int, rows: ShardRows) -> list[Part]:
    buffers: list[Part] = []
    tables = []
    for name, part in rows.tables.items():
        tables.append({"name": name, "n": len(part), "dtype": part.rows.dtype.str})
        buffers += [_view(part.keys), _view(part.versions), _view(part.rows)]
    return _header_parts(shard, version, rows.digest, tables, []) + buffers


def _dense_parts(store: ParamStore, shard: int, version: int, at: int | None) -> list[Part]:
    buffers: list[Part] = []
    entries = []
    dense = store.dense_values(at)
    for name, value in sorted(dense.items()):
        arr = np.ascontiguousarray(value.array)
        shape, dtype = list(arr.shape), arr.dtype.str
        entries.append({"name": name, "dtype": dtype, "shape": shape, "version": value.version})
        buffers.append(_view(arr))
    digest = sum(tensor_hash(n, v) for n, v in dense.items()) % (1 << 64)
    return _header_parts(shard, version, digest, [], entries) + buffers


def _header_parts(
    shard: int,
    version: int,
    digest: int,
    tables: list[dict[str, Any]],
    dense: list[dict[str, Any]],
) -> list[Part]:
    header = {"shard": shard, "version": version, "digest": digest}
    head = orjson.dumps({**header, "tables": tables, "dense": dense})
    return [MAGIC, _LEN.pack(len(head)), head]


def _view(arr: npt.NDArray[Any]) -> memoryview:
    """The bytes of a C-contiguous little-endian array, without a copy."""
    flat = np.ascontiguousarray(arr).reshape(-1)  # 1-d: a cast works for empty arrays too
    return flat.data.cast("B")


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
