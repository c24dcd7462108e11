"""Where some row shards' rows lie as of given versions: a scan of the key indexes, in steps.

A checkpoint and the trainer's validated head read every row of a store through one scan of
each table's index. At 500k rows one scan held a node's loop 30-75 ms of CPU, and on a loaded
host (thirteen processes on two cores) 130-400 ms of wall time: every delta for that node and
its subtree waited. ``ScanJob`` reads a slice of index positions per ``step``, so the loop goes
on between slices. That is exact because a key keeps its index position until the index grows
(no deletions: a key without a row holds ABSENT), so the slices together see every key that had
a row at the job's start; a slot found later than the start is walked back along its undo chain
(``EmbeddingTable.rows_as_of``) to the start's versions. A growth of an index, a rollback or a
restored shard (``ParamStore.rewrites``), or undo released past those versions voids the job.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from p2prec.model.store import ParamStore

I64 = npt.NDArray[np.int64]

#: Index positions a scan step reads: 4 MiB of (key, slot) pairs, ~1-2 ms of CPU.
SCAN_STEP_POSITIONS = 1 << 18


class ScanVoided(Exception):
    """The store changed under a ``ScanJob`` in a way its slices cannot follow."""


@dataclass(eq=False)
class TableScan:
    """One table's part of a scan: per shard, the (keys, slots) pieces found, slice by slice."""

    pieces: dict[int, list[tuple[I64, I64]]] = field(default_factory=dict)

    def of_shard(self, shard: int) -> tuple[I64, I64]:
        """Keys of ``shard`` (in no order) and the slot holding each one's row."""
        found = self.pieces.get(shard, [])
        if len(found) == 1:
            return found[0]
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate([k for k, _ in found]), np.concatenate([s for _, s in found])


@dataclass(frozen=True, eq=False)
class ShardScan:
    """Where some row shards' rows lie, as of per-shard versions (``ParamStore.scan_shards``)."""

    at: I64  # packed version of every shard the scan reads (all n_shards entries)
    rewrites: int  # the store's ``rewrites`` when scanned: a rollback or restore voids it
    tables: dict[str, TableScan]

    def readable(self, store: ParamStore, shard: int) -> bool:
        """True while the scan's slots of ``shard`` still hold its rows at ``at[shard]``."""
        return store.rewrites == self.rewrites and store.can_read_at(shard, int(self.at[shard]))


class ScanJob:
    """A scan of ``shards`` as of ``at`` (default: the versions when the job begins), a slice
    of index positions per ``step`` (see the module docstring). ``step`` returns the
    ``ShardScan`` once every table is read, else None; it raises ``ScanVoided`` when the store
    changed under the job (begin a new one)."""

    def __init__(
        self,
        store: ParamStore,
        shards: Sequence[int],
        at: I64 | None = None,
        step_positions: int = SCAN_STEP_POSITIONS,
    ) -> None:
        self.store = store
        self.shards = np.asarray(sorted(set(shards)), dtype=np.int64)
        self.at = (store.vector.packed if at is None else at).copy()
        self.step_positions = step_positions
        self._wanted = np.zeros(store.layout.n_shards, dtype=bool)
        self._wanted[self.shards] = True
        self._rewrites = store.rewrites
        self._growths = {name: t.index.growths for name, t in store.tables.items()}
        self._names = list(store.tables)
        self._tables = {name: TableScan() for name in self._names}
        self._table = 0
        self._position = 0
        self._voided: ScanVoided | None = None  # met by ``step_off_loop``
        self._check()

    def run(self) -> ShardScan:
        """Every step at once."""
        while (scan := self.step()) is None:
            pass
        return scan

    def step(self) -> ShardScan | None:
        self._check()
        if self._table == len(self._names):
            return ShardScan(self.at, self._rewrites, self._tables)
        name = self._names[self._table]
        table = self.store.tables[name]
        stop = min(self._position + self.step_positions, table.index.capacity)
        keys, slots = table.index.live_between(self._position, stop)
        slots = table.rows_as_of(slots, self.at[table.slot_shard[slots]])
        shards = table.slot_shard[np.maximum(slots, 0)]
        keep = (slots >= 0) & self._wanted[shards]
        _add_by_shard(self._tables[name], keys[keep], slots[keep], shards[keep])
        self._position = stop
        if stop == table.index.capacity:
            self._table, self._position = self._table + 1, 0
        return None

    def grown(self) -> bool:
        """True when an index grew since the job began (its positions moved)."""
        return any(self.store.tables[n].index.growths != g for n, g in self._growths.items())

    def step_off_loop(self) -> ShardScan | None:
        """``step`` for a worker thread while the owner changes the store: a ``ScanVoided``
        is kept for ``confirm_step``, which the owner calls afterwards."""
        try:
            return self.step()
        except ScanVoided as exc:
            self._voided = exc
            return None

    def confirm_step(self) -> None:
        """On the owner's side, after ``step_off_loop``: raise ``ScanVoided`` if that step met
        a change it cannot follow, or an index grew meanwhile (a slice read during the growth
        may have missed keys)."""
        if self._voided is None and self.grown():
            self._voided = ScanVoided("an index grew: its positions moved")
        if self._voided is not None:
            raise self._voided

    def _check(self) -> None:
        store = self.store
        if store.rewrites != self._rewrites:
            raise ScanVoided("a rollback or restored shard rewrote the store")
        if self.grown():
            raise ScanVoided("an index grew: its positions moved")
        if not store.readable_as_of(self.shards, self.at):
            raise ScanVoided("undo released past the scan's versions")


def _add_by_shard(scan: TableScan, keys: I64, slots: I64, shards: I64) -> None:
    """Group one slice by shard (a radix sort of the small shard numbers) into ``scan``."""
    if not keys.size:
        return
    small = shards.astype(np.min_scalar_type(max(int(shards.max()), 1)))
    order = np.argsort(small, kind="stable")
    keys, slots, shards = keys[order], slots[order], shards[order]
    starts = np.flatnonzero(np.diff(shards)) + 1
    bounds = [0, *starts.tolist(), keys.size]
    for lo, hi in itertools.pairwise(bounds):
        scan.pieces.setdefault(int(shards[lo]), []).append((keys[lo:hi], slots[lo:hi]))
