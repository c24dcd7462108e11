"""A vectorised open-addressing hash map from int64 ids to int64 slots.

Keys are arbitrary int64 ids (no sentinel value is reserved). A key, once inserted, keeps its
position for the life of the map (until it grows); its value may be set to ``ABSENT`` to say the
row is gone (rolled back) without deleting the key, so no tombstones are needed. Lookups and
inserts probe all keys of a batch together, one numpy round per probe step (linear probing,
load factor at most one half).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from p2prec.model.kernels import NATIVE, Kernels
from p2prec.model.keyhash import mix64
from p2prec.model.spare import PREPARE_AT, SPARE_MIN_BYTES, SpareArray, prepared_or_new

I64 = npt.NDArray[np.int64]

EMPTY = -2  # no key at this position
ABSENT = -1  # key known, no row (value of a found key may be ABSENT)
_TAG_BASE = -3  # transient tags written by the duplicate check lie below EMPTY
_LOAD_MAX = 0.5
_SCALAR_TAIL = 32  # probe chains still pending below this many keys: walked in Python


class DuplicateKeys(ValueError):
    """A batch named the same key twice."""


class KeyIndex:
    """int64 key -> int64 value (a slot, or ABSENT); positions are stable between growths."""

    def __init__(self, capacity_hint: int = 1024) -> None:
        capacity = 1 << max(4, int(np.ceil(np.log2(max(2 * capacity_hint, 16)))))
        self._spare: SpareArray | None = None  # the next, doubled map, prepared ahead
        self.growths = -1  # times the positions moved (a scan in slices must begin again)
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        spare, self._spare = self._spare, None
        pairs = prepared_or_new(spare, (capacity, 2), np.dtype(np.int64), EMPTY)
        # Keys and values interleaved: a probe reads one cache line, not two.
        self._pairs: I64 = pairs
        self._keys: I64 = pairs[:, 0]
        self._vals: I64 = pairs[:, 1]
        self._count = 0
        self.growths += 1

    def __len__(self) -> int:
        return self._count

    @property
    def pairs(self) -> I64:
        """The map itself, (capacity, 2) of [key, value] (EMPTY values: free), for the compiled
        kernels that read and write it; valid until the map grows."""
        return self._pairs

    @property
    def capacity(self) -> int:
        return int(self._keys.size)

    def _home(self, keys: I64) -> I64:
        mask = np.uint64(self.capacity - 1)
        return (mix64(keys.view(np.uint64)) & mask).astype(np.int64)

    def find(self, keys: I64) -> I64:
        """Positions of ``keys`` (-1 where the key was never inserted)."""
        found, _ = self._probe(keys)
        return found

    def _probe(self, keys: I64) -> tuple[I64, I64]:
        """Each key's position, or -1 and the first empty position of its probe chain (where
        an insert would put it; -1 for keys found). Vector rounds while many keys are
        pending, then the few long chains one key at a time: a numpy round costs the same
        for 3 keys as for 300."""
        if NATIVE is not None:
            found, empty_at = np.empty((2, keys.size), dtype=np.int64)
            NATIVE.probe(self._pairs, np.ascontiguousarray(keys), found, empty_at)
            return found, empty_at
        mask = self.capacity - 1
        found = np.full(keys.size, -1, dtype=np.int64)
        empty_at = np.full(keys.size, -1, dtype=np.int64)
        pending = np.arange(keys.size)
        pos = self._home(keys)
        while pending.size > _SCALAR_TAIL:
            p = pos[pending]
            vals = self._vals[p]
            empty = vals == EMPTY
            hit = ~empty & (self._keys[p] == keys[pending])
            found[pending[hit]] = p[hit]
            empty_at[pending[empty]] = p[empty]
            more = ~(empty | hit)
            pending = pending[more]
            pos[pending] = (p[more] + 1) & mask
        if pending.size:
            self._probe_scalar(keys, pending, pos, found, empty_at)
        return found, empty_at

    def _probe_scalar(self, keys: I64, pending: I64, pos: I64, found: I64, empty_at: I64) -> None:
        """``_probe``'s loop for a few keys, in Python ints (a numpy round is ~2 us)."""
        mask = self.capacity - 1
        pairs = self._pairs.data.cast("B").cast("q")  # flat [key, value, key, ...]
        chains = zip(pending.tolist(), keys[pending].tolist(), pos[pending].tolist(), strict=True)
        for i, key, start in chains:
            p = start
            while True:
                if pairs[2 * p + 1] == EMPTY:
                    empty_at[i] = p
                    break
                if pairs[2 * p] == key:
                    found[i] = p
                    break
                p = (p + 1) & mask

    def insert_new(self, keys: I64) -> I64:
        """Insert ``keys`` (none present) with value ABSENT; returns their positions.

        May grow the map, which moves every key: positions found before are then stale.
        Raises ``DuplicateKeys`` if a key occurs twice in ``keys``; the map then holds the
        keys inserted so far as ABSENT, which changes no content."""
        self._reserve(self._count + keys.size)
        return self._insert_at(keys, self._home(keys))

    def _insert_at(self, keys: I64, start: I64) -> I64:
        """Insert ``keys`` (none present) at the first free position from ``start`` on, which
        must lie on each key's probe chain with every position before it taken."""
        mask = self.capacity - 1
        result = np.empty(keys.size, dtype=np.int64)
        pending = np.arange(keys.size)
        pos = start.copy()
        while pending.size:
            p = pos[pending]
            free = np.flatnonzero(self._vals[p] == EMPTY)
            won = free[self._claim(p[free])]
            self._keys[p[won]] = keys[pending[won]]
            self._vals[p[won]] = ABSENT
            self._count += won.size
            result[pending[won]] = p[won]
            lost = np.ones(pending.size, dtype=bool)
            lost[won] = False
            pending = pending[lost]
            if (self._keys[p[lost]] == keys[pending]).any():  # lost to its own twin
                raise DuplicateKeys("a new key occurs twice in one batch")
            pos[pending] = (p[lost] + 1) & mask
        self._prepare_growth()
        return result

    def _claim(self, positions: I64) -> npt.NDArray[np.bool_]:
        """Which of several candidates for empty ``positions`` win them: each writes its tag,
        the last writer of a position wins (no sort needed)."""
        tags = _TAG_BASE - np.arange(positions.size, dtype=np.int64)
        self._vals[positions] = tags
        return np.asarray(self._vals[positions] == tags)

    def find_or_insert(self, keys: I64) -> I64:
        """Positions of ``keys``, inserting (as ABSENT) those never seen.

        A missing key is inserted from the first empty position its lookup met (linear
        probing: every position before it on the chain is taken), not probed again from
        its home. Raises ``DuplicateKeys`` if a key occurs twice; no value has changed then."""
        self._reserve(self._count + keys.size)  # growth moves positions: grow before finding
        if NATIVE is not None:
            return self._find_or_insert_native(NATIVE, keys)
        pos, empty_at = self._probe(keys)
        missing = pos < 0
        self._check_found_unique(pos[~missing])
        if missing.any():
            pos[missing] = self._insert_at(keys[missing], empty_at[missing])
        return pos

    def _find_or_insert_native(self, native: Kernels, keys: I64) -> I64:
        pos = np.empty(keys.size, dtype=np.int64)
        inserted, duplicate = native.find_or_insert(self._pairs, np.ascontiguousarray(keys), pos)
        self._count += inserted
        self._prepare_growth()
        if duplicate:
            raise DuplicateKeys("a key occurs twice in one batch")
        return pos

    def _check_found_unique(self, positions: I64) -> None:
        """Tag each position with its batch index, read the tags back, restore the values: a
        repeated position keeps only its last tag. The values are hot in cache after find()."""
        saved = self._vals[positions]
        tags = _TAG_BASE - np.arange(positions.size, dtype=np.int64)
        self._vals[positions] = tags
        repeated = not np.array_equal(self._vals[positions], tags)
        self._vals[positions] = saved
        if repeated:
            raise DuplicateKeys("a key occurs twice in one batch")

    def values(self, positions: I64) -> I64:
        return self._vals[positions]

    def set_values(self, positions: I64, values: I64) -> None:
        self._vals[positions] = values

    def lookup(self, keys: I64) -> I64:
        """Values for ``keys``: a slot, or ABSENT where the key has no row."""
        pos = self.find(keys)
        out = np.full(keys.size, ABSENT, dtype=np.int64)
        found = pos >= 0
        out[found] = self._vals[pos[found]]
        return out

    def items(self) -> tuple[I64, I64]:
        """All (key, value) pairs whose value is a slot (not ABSENT). One gather of whole
        pairs: masking keys and values apiece took 3x as long (18 ms at 2M positions)."""
        return self.live_between(0, self.capacity)

    def live_between(self, start: int, stop: int) -> tuple[I64, I64]:
        """``items`` at positions ``[start, stop)`` (stable until the map grows)."""
        part = self._pairs[start:stop]
        live = part[np.flatnonzero(part[:, 1] >= 0)]
        return np.ascontiguousarray(live[:, 0]), np.ascontiguousarray(live[:, 1])

    def _prepare_growth(self) -> None:
        """Start preparing the doubled map once ``PREPARE_AT`` of the way to the growth."""
        due = self._count >= PREPARE_AT * _LOAD_MAX * self.capacity
        if due and self._spare is None and 32 * self.capacity >= SPARE_MIN_BYTES:
            self._spare = SpareArray((2 * self.capacity, 2), np.dtype(np.int64), EMPTY)

    def _reserve(self, count: int) -> None:
        if count <= self.capacity * _LOAD_MAX:
            return
        keys = self._keys[self._vals != EMPTY]
        vals = self._vals[self._vals != EMPTY]
        capacity = self.capacity
        while count > capacity * _LOAD_MAX:
            capacity *= 2
        self._allocate(capacity)
        self.set_values(self.insert_new(keys), vals)
