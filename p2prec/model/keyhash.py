"""Vectorised 64-bit mixing of int64 ids: shard placement and hash-table probing.

``shard_of`` is part of the protocol: every process must place a key in the same shard, so the
function and the table salts never change for a given protocol version.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from blake3 import blake3

from p2prec.model.kernels import NATIVE

U64 = npt.NDArray[np.uint64]

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


def mix64(x: U64) -> U64:
    """splitmix64 finaliser over a uint64 array (wrapping arithmetic, a new array)."""
    x = x ^ (x >> _S30)
    x *= _C1
    x ^= x >> _S27
    x *= _C2
    x ^= x >> _S31
    return x


def table_salt(name: str) -> np.uint64:
    """A stable 64-bit salt per table name, so equal ids in two tables land apart."""
    return np.uint64(int.from_bytes(blake3(name.encode()).digest(8), "little"))


def shard_of(
    salt: np.uint64, keys: npt.NDArray[np.int64], row_shards: int
) -> npt.NDArray[np.int64]:
    """Shard of each key of one table: ``mix64(key ^ salt) % row_shards``."""
    if NATIVE is not None:
        out = np.empty(keys.size, dtype=np.int64)
        NATIVE.shard_of(np.ascontiguousarray(keys), int(salt), row_shards, out)
        return out
    mixed = mix64(keys.view(np.uint64) ^ salt)
    return (mixed % np.uint64(row_shards)).astype(np.int64)
