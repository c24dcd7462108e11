"""The parameter store: sharded, versioned embedding tables and dense tensors.

Shards ``0 .. row_shards-1`` hold embedding rows (``shard = hash(table, key) % row_shards``);
shard ``row_shards`` is the dense shard. For every shard the store keeps its version (the
version vector), a 64-bit content digest updated in O(rows changed), and a bounded history of
steps (``steplog.py``) for rollback, validated reads and incremental catch-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2prec.core.merkle import MerkleTree
from p2prec.core.versions import VersionVector
from p2prec.model.dense import DenseShard
from p2prec.model.kernels import NATIVE
from p2prec.model.keyhash import U64
from p2prec.model.keyindex import DuplicateKeys
from p2prec.model.layout import StoreLayout
from p2prec.model.scan import ScanJob, ShardScan
from p2prec.model.steplog import DenseValue, Released, StepGroup, StepLog
from p2prec.model.table import EmbeddingTable, Written
from p2prec.wire.messages import ParamDelta, TableRows

I64 = npt.NDArray[np.int64]

_NOT_STEPPED, _DUPLICATE, _GAP, _APPLY = 0, 1, 2, 3


class InvalidDelta(ValueError):
    """A delta that cannot belong to this store (unknown table, wrong shape, row outside the
    shards it steps, row version outside its step, repeated key). Nothing was applied."""


class UndoUnavailable(Exception):
    """The requested rollback reaches below the undo information kept. Nothing was changed."""

    def __init__(self, shards: list[int]) -> None:
        super().__init__(f"no undo information to roll back shards {shards}")
        self.shards = shards


@dataclass(frozen=True)
class ApplyResult:
    """Which shards a delta stepped, which it had already, and which it could not (a gap)."""

    applied: tuple[int, ...]
    duplicate: tuple[int, ...]
    gaps: tuple[int, ...]
    rows_written: int


@dataclass(frozen=True, eq=False)
class Lookup:
    """Rows for a batch of keys: ``found[i]`` is False for keys the store does not hold."""

    rows: npt.NDArray[np.floating]
    found: npt.NDArray[np.bool_]
    versions: I64


@dataclass(eq=False)
class ShardRows:
    """The rows of one row shard by table (sorted by key), and the shard digest they make."""

    tables: dict[str, TableRows]
    digest: int


@dataclass(frozen=True, eq=False)
class ShardChanges:
    """Rows of one shard changed in ``(since, version]``, latest values only."""

    shard: int
    since: int
    version: int
    tables: Mapping[str, TableRows]
    dense: Mapping[str, npt.NDArray[np.floating]]


_WHOLE_INDEX = 1 << 62  # a scan step as large as any index: the scan at once


class ParamStore:
    """Sharded parameter state with version vector, digests, undo and change history."""

    def __init__(
        self,
        layout: StoreLayout,
        undo_rows_max: int = 4_000_000,
        history_rows_max: int = 4_000_000,
        capacity_rows: int = 1024,
    ) -> None:
        self.layout = layout
        self.tables = {
            name: EmbeddingTable(
                name, layout.dim, layout.np_dtype, layout.row_shards, capacity_rows
            )
            for name in layout.tables
        }
        self.dense = DenseShard()
        n = layout.n_shards
        self._vector: I64 = np.zeros(n, dtype=np.int64)
        self._watermark: I64 = np.zeros(n, dtype=np.int64)
        self._digests = np.zeros(n, dtype=np.uint64)
        self.log = StepLog(n, undo_rows_max, history_rows_max)
        self._tree: MerkleTree | None = None
        self.rewrites = 0  # rollbacks and shard replacements: they free rows a scan may hold

    # -- state -------------------------------------------------------------------------------

    @property
    def vector(self) -> VersionVector:
        return VersionVector(self._vector)

    @property
    def vector_view(self) -> I64:
        """The version vector as a read-only view of the live array (no copy: read it now)."""
        view = self._vector.view()
        view.flags.writeable = False
        return view

    @property
    def watermark(self) -> VersionVector:
        return VersionVector(self._watermark)

    @property
    def digests(self) -> npt.NDArray[np.uint64]:
        digests = self._digests.copy()
        digests[self.layout.dense_shard] = self.dense.digest
        return digests

    def merkle(self) -> MerkleTree:
        if self._tree is None:
            self._tree = MerkleTree.build(self.digests)
        return self._tree

    @property
    def root(self) -> bytes:
        return self.merkle().root

    def _dirty(self) -> None:
        self._tree = None

    # -- apply -------------------------------------------------------------------------------

    def apply(self, delta: ParamDelta) -> ApplyResult:
        """Apply the shards of ``delta`` this store is ready for, in one vectorised batch per
        table. Shards already at or past the delta's version are skipped (re-applying changes
        nothing); shards behind its base are reported as gaps and left alone."""
        shards, status, steps = self._classify(delta)
        self._check_dense(delta)
        batches = {
            name: self._rows_to_apply(name, rows, status, steps)
            for name, rows in delta.tables.items()
        }
        written = {name: self.tables[name].write(*batch) for name, batch in batches.items()}
        shard_status = status[shards]
        applied = shards[shard_status == _APPLY]
        self._record_steps(applied, steps, written, delta)
        self._enforce_budgets()
        self._dirty()
        return ApplyResult(
            applied=tuple(applied.tolist()),
            duplicate=tuple(shards[shard_status == _DUPLICATE].tolist()),
            gaps=tuple(shards[shard_status == _GAP].tolist()),
            rows_written=sum(len(w) for w in written.values()),
        )

    def _classify(self, delta: ParamDelta) -> tuple[I64, I64, I64]:
        """The delta's shards, per-shard status and a (2, n_shards) array of [base, version]
        of this delta."""
        n = self.layout.n_shards
        shards = np.asarray(delta.shards, dtype=np.int64)
        if shards.size and (shards.min() < 0 or shards.max() >= n):
            raise InvalidDelta(f"delta steps a shard outside 0..{n - 1}")
        if np.bincount(shards, minlength=n).max() > 1:
            raise InvalidDelta("delta steps a shard twice")
        bases = np.asarray(delta.bases, dtype=np.int64)
        versions = np.asarray(delta.versions, dtype=np.int64)
        if bases.size != shards.size or versions.size != shards.size or (versions <= bases).any():
            raise InvalidDelta("delta bases/versions do not match its shards")
        steps = np.zeros((2, n), dtype=np.int64)
        steps[0, shards], steps[1, shards] = bases, versions
        current = self._vector[shards]
        status = np.full(n, _NOT_STEPPED, dtype=np.int64)
        status[shards] = np.where(
            current >= versions, _DUPLICATE, np.where(current >= bases, _APPLY, _GAP)
        )
        return shards, status, steps

    def _check_dense(self, delta: ParamDelta) -> None:
        if delta.dense and self.layout.dense_shard not in delta.shards:
            raise InvalidDelta("delta carries dense tensors without stepping the dense shard")

    def _rows_to_apply(
        self, name: str, rows: TableRows, status: I64, steps: I64
    ) -> tuple[I64, I64, I64, npt.NDArray[np.floating], I64]:
        table = self.tables.get(name)
        if table is None:
            raise InvalidDelta(f"unknown table {name!r}")
        n = len(rows)
        if rows.keys.dtype != np.int64 or rows.versions.dtype != np.int64:
            raise InvalidDelta(f"table {name!r}: keys and versions must be int64")
        if not np.issubdtype(rows.rows.dtype, np.floating):
            raise InvalidDelta(f"table {name!r}: rows must be floating point")
        if rows.versions.shape != (n,) or rows.rows.shape != (n, table.dim):
            raise InvalidDelta(f"table {name!r}: rows do not match keys or dim {table.dim}")
        planning = _plan_rows_native if NATIVE is not None else _plan_rows
        shards, keep, problem = planning(table, rows, status, steps)
        if problem:
            raise InvalidDelta(f"table {name!r}: {problem}")
        keys, versions, values = rows.keys, rows.versions, rows.rows
        if keep is not None:
            keys, versions, shards = keys[keep], versions[keep], shards[keep]
            values = np.take(values, keep, axis=0)
        try:
            positions = table.positions(keys)
        except DuplicateKeys as exc:
            raise InvalidDelta(f"table {name!r}: {exc}") from None
        return positions, keys, versions, values, shards

    def _record_steps(
        self, applied: I64, steps: I64, written: Mapping[str, Written], delta: ParamDelta
    ) -> None:
        """One step group for the shards the delta stepped (``steplog.py``)."""
        grouped = {
            name: _ByShard(self.tables[name], w, self.layout.n_shards)
            for name, w in written.items()
        }
        for by_shard in grouped.values():
            self._digests += by_shard.digest_change
        if not applied.size:
            return
        shards = np.sort(applied)
        offsets = {name: by_shard.part_offsets(shards) for name, by_shard in grouped.items()}
        rows = np.zeros(shards.size, dtype=np.int64)
        for part_offsets in offsets.values():
            rows += np.diff(part_offsets)
        group = StepGroup(
            shards,
            self._vector[shards],
            steps[1, shards],
            rows,
            {name: by_shard.keys for name, by_shard in grouped.items()},
            {name: by_shard.slots for name, by_shard in grouped.items()},
            offsets,
        )
        if shards[-1] == self.layout.dense_shard:  # the dense shard is the last one
            group.dense_part = shards.size - 1
            group.dense_prev = self.dense.write(delta.dense, int(group.versions[-1]))
            rows[-1] += len(group.dense_prev)
        self._vector[shards] = group.versions
        self.log.append(group)

    def _add_digests(self, table: EmbeddingTable, slots: I64, prev: I64, shards: I64) -> None:
        np.add.at(self._digests, shards, table.slot_hash[slots])
        had = prev >= 0
        np.subtract.at(self._digests, shards[had], table.slot_hash[prev[had]])

    # -- validation, undo and rollback ---------------------------------------------------------

    def _release_undo(self, released: list[Released]) -> None:
        """Free the rows the released parts' writes replaced: one batch per table (a group
        released whole gives its slots as they are, no copy)."""
        by_table: dict[str, list[I64]] = {}
        for group, parts in released:
            whole = bool(parts.all())
            for name, slots in group.slots.items():
                part_slots = slots if whole else slots[group.rows_of(name, parts)]
                by_table.setdefault(name, []).append(part_slots)
        for group, _parts in released:
            if not group.undo_parts:
                group.slots = {}  # undo all released: only the keys stay, as history
        for name, batch in by_table.items():
            self.tables[name].forget_prev(batch[0] if len(batch) == 1 else np.concatenate(batch))

    def _enforce_budgets(self) -> None:
        self._release_undo(self.log.release_over_budget())
        self._release_undo(self.log.trim_history())

    def validate(self, watermark: VersionVector, release_max: int | None = None) -> None:
        """Raise the validation watermark; undo information at or below it is released: all
        of it now, or about ``release_max`` shard steps of it now and the rest by
        ``release_validated`` (``release_pending`` says whether some is left)."""
        self._check_len(watermark)
        self._watermark = np.maximum(self._watermark, watermark.packed)
        self.log.begin_release()
        self.release_validated(release_max)

    @property
    def release_pending(self) -> bool:
        return self.log.release_pending

    def release_validated(self, max_records: int | None = None) -> bool:
        """Release the undo information at or below the watermark that ``validate`` left,
        about ``max_records`` shard steps of it (whole deltas: a delta over 64 shards counts
        64, ~0.3 us each; one call passes the bound by less than one delta); returns whether
        some is still left."""
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        self._release_undo(self.log.release_validated(self._watermark, max_records))
        return self.log.release_pending

    def can_roll_back(self, to: VersionVector) -> list[int]:
        """Shards that ``rollback(to)`` could not restore (empty: it can)."""
        self._check_len(to)
        self.release_validated()  # as if every validation had released at once
        above = np.flatnonzero(self._vector > to.packed)
        return [int(s) for s in above if not self.log.can_roll_back(int(s), int(to.packed[s]))]

    def rollback(self, to: VersionVector) -> list[int]:
        """Undo every step above ``to`` (all or nothing); returns the shards rolled back."""
        missing = self.can_roll_back(to)
        if missing:
            raise UndoUnavailable(missing)
        shards = [int(s) for s in np.flatnonzero(self._vector > to.packed)]
        for shard in shards:
            self._roll_back_shard(shard, int(to.packed[shard]))
        self._watermark = np.minimum(self._watermark, np.maximum(to.packed, 0))
        self._dirty()
        return shards

    def rollback_shard(self, shard: int, to: int) -> None:
        """Undo the steps of one shard above packed version ``to``."""
        if self._vector[shard] <= to:
            return
        self.release_validated()
        if not self.log.can_roll_back(shard, to):
            raise UndoUnavailable([shard])
        self._roll_back_shard(shard, to)
        self._watermark[shard] = min(int(self._watermark[shard]), to)
        self._dirty()

    def _roll_back_shard(self, shard: int, to: int) -> None:
        self.rewrites += 1
        for step in self.log.pop_newer(shard, to):
            group = step.group
            for name in group.slots:
                table, slots = self.tables[name], step.slots(name)
                shards = np.full(slots.size, shard, dtype=np.int64)
                self._add_digests(table, table.slot_prev[slots], slots, shards)
                table.revert(slots)
            if step.index == group.dense_part:
                self.dense.revert(group.dense_prev)
                group.dense_prev = {}
            if not group.undo_parts:
                group.slots = {}
        self._vector[shard] = to

    def _check_len(self, vector: VersionVector) -> None:
        if len(vector) != self.layout.n_shards:
            raise ValueError(f"vector over {len(vector)} shards, store has {self.layout.n_shards}")

    # -- reads -------------------------------------------------------------------------------

    def lookup(self, table: str, keys: npt.ArrayLike, validated: bool = False) -> Lookup:
        """Rows for ``keys`` (newest, or newest not above the watermark when ``validated``)."""
        tab = self.tables[table]
        ids = np.asarray(keys, dtype=np.int64).reshape(-1)
        slots = tab.slots_at(ids, self._watermark) if validated else tab.current_slots(ids)
        found = slots >= 0
        rows = np.zeros((ids.size, tab.dim), dtype=tab.dtype)
        rows[found] = tab.rows_at(slots[found])
        versions = np.full(ids.size, -1, dtype=np.int64)
        versions[found] = tab.slot_version[slots[found]]
        return Lookup(rows, found, versions)

    def keys(self, table: str) -> I64:
        """Every key of ``table`` that holds a row now, sorted (a validated read of a key may
        still find none: its first row may lie above the watermark)."""
        keys, _slots = self.tables[table].live_slots()
        return np.sort(keys)

    def dense_tensors(self, validated: bool = False) -> dict[str, npt.NDArray[np.floating]]:
        """Dense tensors (read-only), as of the watermark when ``validated``."""
        at = int(self._watermark[self.layout.dense_shard]) if validated else None
        return {name: v.array for name, v in self.dense_values(at).items()}

    def nbytes_estimate(self) -> int:
        """About the bytes a snapshot of every shard takes: live keys times their row values
        plus key and version, and the dense tensors."""
        rows = sum(len(t.index) * (t.dim * t.rows.itemsize + 16) for t in self.tables.values())
        return rows + sum(v.array.nbytes for v in self.dense.values.values())

    def row_count(self, table: str) -> int:
        return int(self.tables[table].live_slots()[0].size)

    def changes_since(self, shard: int, since: int) -> ShardChanges | None:
        """Latest values of the rows of ``shard`` changed after packed version ``since``;
        None when the change history does not reach back that far (send a snapshot)."""
        steps = self.log.records_since(shard, since)
        if steps is None:
            return None
        tables = {}
        for name, table in self.tables.items():
            keys = [step.table_keys(name) for step in steps if name in step.group.keys]
            tables[name] = _current_rows(
                table,
                np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64),
                since,
            )
        dense = {
            name: v.array
            for name, v in self.dense.values.items()
            if shard == self.layout.dense_shard and v.version > since
        }
        return ShardChanges(shard, since, int(self._vector[shard]), tables, dense)

    # -- whole-shard replacement (snapshots) ---------------------------------------------------

    def replace_shard(
        self,
        shard: int,
        version: int,
        tables: Mapping[str, TableRows],
        dense: Mapping[str, DenseValue],
    ) -> None:
        """Replace one shard's whole content (snapshot restore or full-shard catch-up)."""
        self.rewrites += 1
        if shard == self.layout.dense_shard:
            self.dense.replace_all(dense)
        else:
            self._replace_row_shard(shard, tables)
        self.log.reset_shard(shard, version)
        self._vector[shard] = version
        self._dirty()

    def _replace_row_shard(self, shard: int, tables: Mapping[str, TableRows]) -> None:
        for name, rows in tables.items():
            if name not in self.tables or (self.tables[name].shard_of(rows.keys) != shard).any():
                raise InvalidDelta(f"content for shard {shard} holds rows of another shard")
        for table in self.tables.values():
            table.clear_shard(shard)
        self._digests[shard] = 0
        for name, rows in tables.items():
            table = self.tables[name]
            slots = table.load_rows(rows.keys, rows.versions, rows.rows, shard)
            np.add.at(self._digests, np.full(slots.size, shard), table.slot_hash[slots])

    def can_read_at(self, shard: int, at: int) -> bool:
        """True when the content of ``shard`` as of version ``at`` can still be read."""
        return bool(self.log.undo_floor[shard] <= at <= self._vector[shard])

    def shard_rows(self, shard: int, at: int | None = None) -> dict[str, TableRows]:
        """Every row of one row shard, per table, sorted by key: the current rows, or the rows
        as of version ``at`` (see ``can_read_at``)."""
        return self.rows_of_shards([shard], at)[shard].tables

    def rows_of_shards(self, shards: Sequence[int], at: int | None = None) -> dict[int, ShardRows]:
        """``shard_rows`` of many row shards, with their digests, for one scan of each table's
        index (a scan per shard would cost shards x capacity)."""
        versions = None if at is None else np.full(self.layout.n_shards, at, dtype=np.int64)
        scan = self.scan_shards(shards, versions)
        return {s: self.rows_from_scan(scan, s) for s in shards}

    def scan_shards(self, shards: Sequence[int], at: I64 | None = None) -> ShardScan:
        """Where the rows of ``shards`` lie, now or as of the per-shard versions ``at``: one
        scan of each table's index, at once (``ScanJob`` takes it in steps).
        ``rows_from_scan`` reads them later, exactly while ``scan.readable(store)`` holds
        (writes go to fresh slots; the slots a scan found are freed only when undo is
        released, which moves ``undo_floor`` past ``at``)."""
        return ScanJob(self, shards, at, step_positions=_WHOLE_INDEX).run()

    def readable_as_of(self, shards: I64, at: I64) -> bool:
        """``can_read_at`` for every shard of ``shards`` as of ``at[shard]``."""
        floor, vector, want = self.log.undo_floor[shards], self._vector[shards], at[shards]
        return bool(((floor <= want) & (want <= vector)).all())

    def rows_from_scan(self, scan: ShardScan, shard: int) -> ShardRows:
        """The rows of ``shard`` at the scan's version, sorted by key, with their digest."""
        out = ShardRows({}, 0)
        for name, part_scan in scan.tables.items():
            table = self.tables[name]
            keys, slots = part_scan.of_shard(shard)
            by_key = np.argsort(keys)
            keys, part = keys[by_key], slots[by_key]
            out.tables[name] = TableRows(keys, table.slot_version[part], table.rows_at(part))
            out.digest += int(table.slot_hash[part].sum(dtype=np.uint64))
        out.digest %= 1 << 64
        return out

    def dense_values(self, at: int | None = None) -> dict[str, DenseValue]:
        """The dense tensors with their versions, now or as of version ``at``."""
        if at is None:
            return dict(self.dense.values)
        steps = reversed(list(self.log.records(self.layout.dense_shard)))
        return self.dense.at(at, [step.dense_prev for step in steps])

    # -- checks --------------------------------------------------------------------------------

    def validate_state(self) -> None:
        """Check internal consistency from scratch (tests and debug builds); raises
        AssertionError naming the first broken invariant."""
        expected = np.zeros(self.layout.n_shards, dtype=np.uint64)
        for table in self.tables.values():
            keys, slots = table.live_slots()
            assert (table.slot_key[slots] == keys).all(), "index points at a slot of another key"
            shards = table.shard_of(keys)
            assert (table.slot_shard[slots] == shards).all(), "slot in the wrong shard"
            assert (table.slot_version[slots] <= self._vector[shards]).all(), "row above vector"
            np.add.at(expected, shards, table.slot_hash[slots])
        expected[self.layout.dense_shard] = self.dense.digest
        assert (expected == self.digests).all(), "incremental digest differs from recomputed"
        self.log.check()


class _ByShard:
    """Rows one ``write`` stored, grouped by shard (one stable radix sort), with the change of
    each shard's digest: hashes of the new rows minus those of the rows they replaced. Shard
    ``s`` holds ``keys[bounds[s]:bounds[s + 1]]`` (and the same slice of ``slots``)."""

    def __init__(self, table: EmbeddingTable, written: Written, n_shards: int) -> None:
        grouping = _group_native if NATIVE is not None else _group
        order, self.bounds, self.digest_change = grouping(table, written, n_shards)
        self.slots = written.slots[order]
        self.keys = written.keys[order]

    def part_offsets(self, shards: I64) -> I64:
        """Where each of ``shards`` (sorted, and holding every row written) starts, then the
        end: part ``i`` holds ``keys[offsets[i]:offsets[i + 1]]``."""
        offsets = np.empty(shards.size + 1, dtype=np.int64)
        offsets[:-1] = self.bounds[shards]
        offsets[-1] = self.bounds[-1]
        return offsets


_NOT_STEPPED_ROW = "a row lies in a shard the delta does not step"
_ROW_OUTSIDE_STEP = "a row version lies outside its shard's step"


def _plan_rows(
    table: EmbeddingTable, rows: TableRows, status: I64, steps: I64
) -> tuple[I64, I64 | None, str]:
    """Each row's shard, the rows of shards the delta steps here (None: all of them), and
    what is wrong with the rows ("" when nothing is)."""
    shards = table.shard_of(rows.keys)
    row_status = status[shards]
    if (row_status == _NOT_STEPPED).any():
        return shards, None, _NOT_STEPPED_ROW
    if ((rows.versions <= steps[0, shards]) | (rows.versions > steps[1, shards])).any():
        return shards, None, _ROW_OUTSIDE_STEP
    keep = row_status == _APPLY
    return shards, (None if keep.all() else np.flatnonzero(keep)), ""


def _plan_rows_native(
    table: EmbeddingTable, rows: TableRows, status: I64, steps: I64
) -> tuple[I64, I64 | None, str]:
    """``_plan_rows`` in one compiled pass."""
    assert NATIVE is not None
    n = len(rows)
    shards, keep = np.empty((2, n), dtype=np.int64)
    c = np.ascontiguousarray
    kept, problem = NATIVE.rows_plan(
        c(rows.keys), c(rows.versions), int(table.salt), table.row_shards, status, steps[0],
        steps[1], shards, keep,
    )  # fmt: skip
    return (
        shards,
        (None if kept == n else keep[:kept]),
        ("", _NOT_STEPPED_ROW, _ROW_OUTSIDE_STEP)[problem],
    )


def _group(table: EmbeddingTable, written: Written, n_shards: int) -> tuple[I64, I64, U64]:
    """``_ByShard``'s order of the rows, shard bounds and digest changes, in numpy."""
    small = written.shards.astype(np.int16 if n_shards < 2**15 else np.int64)
    order = np.argsort(small, kind="stable")
    bounds = np.searchsorted(small[order], np.arange(n_shards + 1)).astype(np.int64)
    prev = written.prev[order]
    had = prev >= 0
    change = written.hashes[order]
    change -= np.where(had, table.slot_hash[np.where(had, prev, 0)], np.uint64(0))
    running = np.concatenate([np.zeros(1, np.uint64), np.cumsum(change, dtype=np.uint64)])
    return order, bounds, running[bounds[1:]] - running[bounds[:-1]]


def _group_native(table: EmbeddingTable, written: Written, n_shards: int) -> tuple[I64, I64, U64]:
    """``_group`` in one compiled pass (a counting sort)."""
    assert NATIVE is not None
    order = np.empty(len(written), dtype=np.int64)
    bounds = np.empty(n_shards + 1, dtype=np.int64)
    change = np.empty(n_shards, dtype=np.uint64)
    c = np.ascontiguousarray
    NATIVE.group_by_shard(
        c(written.shards),
        c(written.hashes),
        c(written.prev),
        table.slot_hash,
        order,
        bounds,
        change,
    )
    return order, bounds, change


def _current_rows(table: EmbeddingTable, keys: I64, since: int) -> TableRows:
    slots = table.current_slots(keys)
    live = slots >= 0
    live[live] = table.slot_version[slots[live]] > since
    keys, slots = keys[live], slots[live]
    return TableRows(keys, table.slot_version[slots], table.rows_at(slots))


__all__ = [
    "ApplyResult",
    "DuplicateKeys",
    "InvalidDelta",
    "Lookup",
    "ParamStore",
    "ShardChanges",
    "UndoUnavailable",
]
