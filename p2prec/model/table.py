"""One embedding table: rows of dynamic int64 ids, stored in slots, multi-versioned.

A write never overwrites a row in place: the new value goes to a fresh slot and the slot it
replaces stays linked as ``prev`` until the write is validated (then it is freed) or rolled back
(then the key points at ``prev`` again). This makes undo a pointer swap instead of a row copy,
and gives validated reads the older rows they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from p2prec.core.versions import NO_VERSION
from p2prec.model.kernels import NATIVE
from p2prec.model.keyhash import U64, shard_of, table_salt
from p2prec.model.keyindex import ABSENT, KeyIndex
from p2prec.model.rowhash import row_hashes
from p2prec.model.spare import PREPARE_AT, SPARE_MIN_BYTES, SpareArray, prepared_or_new

I64 = npt.NDArray[np.int64]
FREE = -1  # slot_shard of a slot that holds nothing


@dataclass(frozen=True, eq=False)
class Written:
    """Rows one ``write`` stored: new slots, the slots they replaced (or -1), their shards,
    keys and row hashes."""

    slots: I64
    prev: I64
    shards: I64
    keys: I64
    hashes: U64

    def __len__(self) -> int:
        return int(self.slots.size)


class EmbeddingTable:
    """Keyed rows of one table across all shards."""

    def __init__(
        self,
        name: str,
        dim: int,
        dtype: np.dtype[np.floating],
        row_shards: int,
        capacity_rows: int = 1024,
    ) -> None:
        self.name = name
        self.dim = dim
        self.dtype = dtype
        self.row_shards = row_shards
        self.salt = table_salt(name)
        self.index = KeyIndex(capacity_rows)
        capacity = max(16, capacity_rows)
        # Allocated and written at once (np.full, not np.zeros), so that applies do not pay
        # the first touch of fresh pages until the table outgrows ``capacity_rows``.
        self.rows = np.full((capacity, dim), 0, dtype=dtype)
        self.slot_key: I64 = np.full(capacity, 0, dtype=np.int64)
        self.slot_version: I64 = np.full(capacity, NO_VERSION, dtype=np.int64)
        self.slot_hash: U64 = np.full(capacity, 0, dtype=np.uint64)
        self.slot_prev: I64 = np.full(capacity, -1, dtype=np.int64)
        self.slot_shard: I64 = np.full(capacity, FREE, dtype=np.int64)
        self._free: I64 = np.zeros(0, dtype=np.int64)
        self._high_water = 0
        self._spare: SpareArray | None = None  # the next rows array, prepared ahead

    # -- slots -------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return int(self.slot_key.size)

    @property
    def slots_in_use(self) -> int:
        return self._high_water - int(self._free.size)

    def _grow(self, needed: int) -> None:
        """Double the capacity until ``needed`` slots fit. The new rows are left unwritten
        (a slot's row is written before it is ever read) and come from the spare array a
        worker thread prepared (``model/spare.py``) when it is ready: growing copies the old
        rows only (a zero-filled concatenate stalled an apply ~100 ms at 131k rows of dim 64;
        the first touch of fresh pages 309 ms at 512k)."""
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        if capacity == self.capacity:
            return
        self.rows = self._grown_rows(capacity)
        self.slot_key = _grown(self.slot_key, capacity, 0)
        self.slot_version = _grown(self.slot_version, capacity, NO_VERSION)
        self.slot_hash = _grown(self.slot_hash, capacity, 0)
        self.slot_prev = _grown(self.slot_prev, capacity, -1)
        self.slot_shard = _grown(self.slot_shard, capacity, FREE)

    def _grown_rows(self, capacity: int) -> npt.NDArray[np.floating]:
        """The rows in an array of ``capacity`` slots: the spare one prepared ahead when it is
        ready and large enough (then only the copy is left to do), else a fresh one."""
        spare, self._spare = self._spare, None
        rows = prepared_or_new(spare, (capacity, self.dim), self.dtype, None)
        rows[: self.rows.shape[0]] = self.rows
        return rows

    def _prepare_growth(self) -> None:
        """Start preparing the next rows array once the slots are ``PREPARE_AT`` used."""
        due = self._high_water >= PREPARE_AT * self.capacity
        if due and self._spare is None and 2 * self.rows.nbytes >= SPARE_MIN_BYTES:
            self._spare = SpareArray((2 * self.capacity, self.dim), self.dtype, None)

    def _allocate(self, count: int) -> I64:
        # ascending slots: the row scatter then walks memory forwards (faster than random)
        reused = np.sort(self._free[self._free.size - min(count, self._free.size) :])
        self._free = self._free[: self._free.size - reused.size]
        fresh_count = count - reused.size
        self._grow(self._high_water + fresh_count)
        fresh = np.arange(self._high_water, self._high_water + fresh_count, dtype=np.int64)
        self._high_water += fresh_count
        self._prepare_growth()
        return np.concatenate([reused, fresh]) if reused.size else fresh

    def release(self, slots: I64) -> None:
        """Return slots to the free list (their rows are no longer reachable)."""
        if slots.size == 0:
            return
        self.slot_shard[slots] = FREE
        self.slot_version[slots] = NO_VERSION
        self.slot_prev[slots] = -1
        self._free = np.concatenate([self._free, slots])

    # -- reads -------------------------------------------------------------------------------

    def shard_of(self, keys: I64) -> I64:
        return shard_of(self.salt, keys, self.row_shards)

    def rows_at(self, slots: I64) -> npt.NDArray[np.floating]:
        """The rows in ``slots``, a new array: ``np.take`` copies a row at a time, 2-3x
        faster than ``rows[slots]`` for rows of 256 bytes (39 against 90 us per 1,000 rows
        with a cold cache)."""
        return np.take(self.rows, slots, axis=0)

    def current_slots(self, keys: I64) -> I64:
        """Slot holding each key's newest row, or ABSENT (-1)."""
        return self.index.lookup(keys)

    def slots_at(self, keys: I64, watermark: I64) -> I64:
        """Slot of each key's newest row not newer than ``watermark[shard]`` (or -1)."""
        return self.rows_as_of(self.current_slots(keys), watermark[self.shard_of(keys)])

    def rows_as_of(self, slots: I64, limit: I64) -> I64:
        """Each slot walked back along its undo chain (``slot_prev``) to the newest row not
        newer than ``limit`` (or -1: the key had no row then); a new array."""
        slots = slots.copy()
        while True:
            live = slots >= 0
            too_new = np.zeros(slots.size, dtype=bool)
            too_new[live] = self.slot_version[slots[live]] > limit[live]
            if not too_new.any():
                return slots
            slots[too_new] = self.slot_prev[slots[too_new]]

    def live_slots(self, shard: int | None = None) -> tuple[I64, I64]:
        """Keys and current slots of every row (of one shard when given)."""
        keys, slots = self.index.items()
        if shard is not None:
            mine = self.slot_shard[slots] == shard
            keys, slots = keys[mine], slots[mine]
        return keys, slots

    # -- writes ------------------------------------------------------------------------------

    def positions(self, keys: I64) -> I64:
        """Index positions of ``keys`` (new keys enter as ABSENT: no content changes).

        Raises ``DuplicateKeys`` before changing anything if a key occurs twice."""
        return self.index.find_or_insert(keys)

    def write(
        self, positions: I64, keys: I64, versions: I64, rows: npt.NDArray[np.floating], shards: I64
    ) -> Written:
        """Store the rows whose version is newer than the key's current row."""
        current, newer = self._current_and_newer(positions, versions)
        if newer is not None:  # copy only when some rows are stale
            keys, versions, shards = keys[newer], versions[newer], shards[newer]
            positions, current = positions[newer], current[newer]
            rows = np.take(rows, newer, axis=0)
        slots = self._allocate(keys.size)
        hashes = self._fill(slots, keys, versions, rows, shards, current, positions)
        return Written(slots, current, shards, keys, hashes)

    def _current_and_newer(self, positions: I64, versions: I64) -> tuple[I64, I64 | None]:
        """Each key's current slot (or ABSENT), and which rows are newer than it (None: all)."""
        if NATIVE is not None:
            current, newer = np.empty((2, positions.size), dtype=np.int64)
            c = np.ascontiguousarray
            kept = NATIVE.newer_rows(
                self.index.pairs, c(positions), self.slot_version, c(versions), NO_VERSION,
                current, newer,
            )  # fmt: skip
            return current, (None if kept == positions.size else newer[:kept])
        current = self.index.values(positions)
        held = current >= 0
        current_version = np.where(held, self.slot_version[np.where(held, current, 0)], NO_VERSION)
        newer_mask = versions > current_version
        return current, (None if newer_mask.all() else np.flatnonzero(newer_mask))

    def _fill(
        self,
        slots: I64,
        keys: I64,
        versions: I64,
        rows: npt.NDArray[np.floating],
        shards: I64,
        prev: I64,
        positions: I64,
    ) -> U64:
        """Write rows to ``slots`` with their bookkeeping, and point the keys' index
        ``positions`` at them; returns the rows' hashes."""
        stored = np.ascontiguousarray(rows, dtype=self.dtype)
        _as_items(self.rows)[slots] = _as_items(stored)
        hashes = row_hashes(self.salt, keys, versions, stored)
        if NATIVE is not None:
            c = np.ascontiguousarray
            NATIVE.fill_slots(
                slots, c(keys), c(versions), c(shards), hashes, c(prev), c(positions),
                self.slot_key, self.slot_version, self.slot_shard, self.slot_hash,
                self.slot_prev, self.index.pairs,
            )  # fmt: skip
            return hashes
        self.slot_key[slots] = keys
        self.slot_version[slots] = versions
        self.slot_shard[slots] = shards
        self.slot_hash[slots] = hashes
        self.slot_prev[slots] = prev
        self.index.set_values(positions, slots)
        return hashes

    def revert(self, slots: I64) -> None:
        """Undo writes: each key points at its slot's ``prev`` again; the slots are freed."""
        if slots.size == 0:
            return
        positions = self.index.find(self.slot_key[slots])
        self.index.set_values(positions, self.slot_prev[slots])
        self.release(slots)

    def forget_prev(self, slots: I64) -> None:
        """Drop the undo information of writes: free the rows they replaced."""
        prev = self.slot_prev[slots]
        self.release(prev[prev >= 0])
        self.slot_prev[slots] = -1

    def clear_shard(self, shard: int) -> None:
        """Remove every row of one shard, current or kept for undo."""
        keys, _slots = self.live_slots(shard)
        self.index.set_values(self.index.find(keys), np.full(keys.size, ABSENT))
        self.release(np.flatnonzero(self.slot_shard == shard).astype(np.int64))

    def load_rows(
        self, keys: I64, versions: I64, rows: npt.NDArray[np.floating], shard: int
    ) -> I64:
        """Insert rows of a cleared shard as they are (snapshot restore); returns new slots."""
        positions = self.index.find_or_insert(keys)
        slots = self._allocate(keys.size)
        shards = np.full(keys.size, shard, dtype=np.int64)
        self._fill(slots, keys, versions, rows, shards, np.full(keys.size, -1, np.int64), positions)
        return slots


A = TypeVar("A", bound=np.generic)


def _as_items(rows: npt.NDArray[np.floating]) -> npt.NDArray[np.void]:
    """C-contiguous rows viewed as one opaque item each: a scatter then copies whole rows
    (30 against 59 us per 1,000 rows of 256 bytes with a cold cache)."""
    return rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).reshape(rows.shape[0])


def _grown(array: npt.NDArray[A], capacity: int, fill: int | None) -> npt.NDArray[A]:
    """``array`` with room for ``capacity`` entries along axis 0: the old entries copied, the
    new ones set to ``fill`` (left unwritten when None)."""
    grown = np.empty((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    if fill is not None:
        grown[array.shape[0] :] = fill
    return grown
