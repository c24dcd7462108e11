"""Per-row content hashes, the leaves of the shard digests.

A shard's digest is the sum (mod 2**64) of the hashes of its rows, so it is updated in
O(rows changed) (add the new row's hash, subtract the one it replaced) and does not depend on the
order in which deltas arrived. A row's hash covers its table, key, version and bytes. The
constants are part of the protocol: peers compare digests.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from blake3 import blake3

from p2prec.model.kernels import NATIVE
from p2prec.model.keyhash import U64, mix64

_WORD_TYPES = {8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}
_VERSION_MUL = np.uint64(0x9E3779B97F4A7C15)


def _odd_constants(count: int) -> U64:
    raw = blake3(b"p2prec-rowhash-v1").digest(8 * count)
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64) | np.uint64(1)


_K_CACHE: dict[int, U64] = {}


def _constants(count: int) -> U64:
    if count not in _K_CACHE:
        _K_CACHE[count] = _odd_constants(count)
    return _K_CACHE[count]


def _word_width(row_bytes: int) -> int:
    """Bytes per word of a row: the widest of 8, 4, 2, 1 that divides it."""
    return next(w for w in (8, 4, 2, 1) if row_bytes % w == 0)


def _row_words(rows: npt.NDArray[np.generic]) -> U64:
    """View each row's bytes as unsigned words, widened to uint64 (no copy for 8-byte words)."""
    flat = np.ascontiguousarray(rows).reshape(rows.shape[0], -1).view(np.uint8)
    width = _word_width(flat.shape[1])
    words = flat.view(_WORD_TYPES[width])
    return words if width == 8 else words.astype(np.uint64)


def row_hashes(
    salt: np.uint64,
    keys: npt.NDArray[np.int64],
    versions: npt.NDArray[np.int64],
    rows: npt.NDArray[np.generic],
) -> U64:
    """64-bit hash of each ``(table, key, version, row bytes)``."""
    if keys.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if NATIVE is not None:
        rows = np.ascontiguousarray(rows)
        out = np.empty(keys.size, dtype=np.uint64)
        count = rows.nbytes // keys.size // _word_width(rows.nbytes // keys.size)
        keys, versions = np.ascontiguousarray(keys), np.ascontiguousarray(versions)
        NATIVE.row_hashes(int(salt), keys, versions, rows, _constants(count), out)
        return out
    words = _row_words(rows)
    linear = words @ _constants(words.shape[1])
    ident = mix64(keys.view(np.uint64) ^ salt) + versions.view(np.uint64) * _VERSION_MUL
    return mix64(linear ^ mix64(ident))


def bytes_hash(*parts: bytes) -> np.uint64:
    """64-bit BLAKE3 of length-prefixed parts (for dense tensors)."""
    h = blake3()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return np.uint64(int.from_bytes(h.digest(8), "little"))
