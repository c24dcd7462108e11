"""The bounded history of shard steps: undo information and change history.

Every shard step (one delta applied to one shard) leaves a ``StepRecord``. While it holds undo
information, the step can be rolled back by a pointer swap (see ``table.py``); once validated,
or when the undo budget is spent, its undo information is released. The record then stays as
change history (which keys changed at which version, for incremental catch-up) until the history
budget is spent. Both budgets are counted in rows, and released oldest first.

``undo_floor[s]``: the oldest version shard ``s`` can be rolled back to.
``history_floor[s]``: the oldest version from which ``records_since`` can answer for shard ``s``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class DenseValue:
    """A dense tensor with the version that wrote it."""

    array: npt.NDArray[np.floating]
    version: int


@dataclass(eq=False, slots=True)
class StepRecord:
    """What one step changed in one shard."""

    shard: int
    base: int  # packed version of the shard before the step
    version: int  # packed version after it
    keys: dict[str, I64]  # per table: keys written (change history)
    slots: dict[str, I64]  # per table: slots written (undo, while has_undo)
    rows: int  # rows written (table rows + dense tensors): the record's weight in the budgets
    dense_prev: dict[str, DenseValue | None] = field(default_factory=dict)
    dense_names: tuple[str, ...] = ()
    has_undo: bool = True
    forgotten: bool = False  # trimmed, rolled back or reset: in no budget any more


class StepLog:
    """Per-shard step records with row budgets for undo and for change history.

    Within a shard, the records still holding undo are always the newest ones (undo is
    released oldest first, by validation or by budget), so each shard keeps two deques:
    ``_done`` (history only) then ``_undo``. Releasing moves a record from the front of
    ``_undo`` to the back of ``_done``: validation costs what it releases, not the history."""

    def __init__(self, n_shards: int, undo_rows_max: int, history_rows_max: int) -> None:
        self.undo_rows_max = undo_rows_max
        self.history_rows_max = max(history_rows_max, undo_rows_max)
        self._done: list[deque[StepRecord]] = [deque() for _ in range(n_shards)]
        self._undo: list[deque[StepRecord]] = [deque() for _ in range(n_shards)]
        # Every record by age, for the budgets; entries that left (released, forgotten) are
        # skipped when they reach the front (a dict keyed by id() cost ~1 us per record,
        # 64 records per delta).
        self._undo_order: deque[StepRecord] = deque()
        self._history_order: deque[StepRecord] = deque()
        self.undo_rows = 0
        self.history_rows = 0
        self.undo_floor: I64 = np.zeros(n_shards, dtype=np.int64)
        self.history_floor: I64 = np.zeros(n_shards, dtype=np.int64)

    def append(self, record: StepRecord) -> None:
        self._undo[record.shard].append(record)
        self._undo_order.append(record)
        self._history_order.append(record)
        self.undo_rows += record.rows
        self.history_rows += record.rows

    def records(self, shard: int) -> Iterator[StepRecord]:
        """The shard's records, oldest first."""
        return itertools.chain(self._done[shard], self._undo[shard])

    # -- undo --------------------------------------------------------------------------------

    def can_roll_back(self, shard: int, target: int) -> bool:
        """True when shard steps above ``target`` all hold undo and end exactly at it."""
        if target < self.undo_floor[shard]:
            return False
        newest_first = itertools.chain(reversed(self._undo[shard]), reversed(self._done[shard]))
        for record in newest_first:
            if record.version <= target:
                return record.version == target
            if not record.has_undo:
                return False
            if record.base <= target:
                return record.base == target
        return False  # history does not reach back to target

    def pop_newer(self, shard: int, target: int) -> list[StepRecord]:
        """Remove and return the records above ``target``, newest first."""
        popped: list[StepRecord] = []
        for records in (self._undo[shard], self._done[shard]):
            while records and records[-1].version > target:
                record = records.pop()
                self._forget(record)
                popped.append(record)
        return popped

    def release_validated(
        self, shard: int, upto: int, max_records: int | None = None
    ) -> list[StepRecord]:
        """Records of ``shard`` at or below ``upto`` that still hold undo, now released (the
        oldest ``max_records`` of them when given)."""
        released: list[StepRecord] = []
        undo = self._undo[shard]
        while undo and undo[0].version <= upto and len(released) != max_records:
            released.append(self._release(undo[0]))
        self._oldest_with_undo()  # drop the released ones from the front of the age order
        return released

    def release_over_budget(self) -> list[StepRecord]:
        """Oldest records holding undo, released until the undo budget holds."""
        released = []
        while self.undo_rows > self.undo_rows_max:
            oldest = self._oldest_with_undo()
            if oldest is None:
                break
            released.append(self._release(oldest))
        return released

    def _oldest_with_undo(self) -> StepRecord | None:
        order = self._undo_order
        while order and not order[0].has_undo:
            order.popleft()
        return order[0] if order else None

    def _oldest_in_history(self) -> StepRecord | None:
        order = self._history_order
        while order and order[0].forgotten:
            order.popleft()
        return order[0] if order else None

    def _release(self, record: StepRecord) -> StepRecord:
        """Move the oldest undo record of its shard to the history-only records. The rows
        its write replaced are freed: the shard cannot be read (nor rolled back) as of an
        older version any more."""
        shard = record.shard
        undo = self._undo[shard]
        assert undo[0] is record, "undo is released oldest first within a shard"
        self._done[shard].append(undo.popleft())
        record.has_undo = False
        self.undo_rows -= record.rows
        self.undo_floor[shard] = max(self.undo_floor[shard], record.version)
        return record

    # -- history -----------------------------------------------------------------------------

    def trim_history(self) -> list[StepRecord]:
        """Drop the oldest records until the history budget holds; returns those that still
        held undo (the caller must release their undo information)."""
        unreleased = []
        while self.history_rows > self.history_rows_max:
            record = self._oldest_in_history()
            if record is None:
                break
            if record.has_undo:
                unreleased.append(self._release(record))
            shard = record.shard
            oldest = self._done[shard].popleft()
            assert oldest is record, "history is trimmed oldest first"
            self._history_order.popleft()
            record.forgotten = True
            self.history_rows -= record.rows
            self.history_floor[shard] = max(self.history_floor[shard], record.version)
            self.undo_floor[shard] = max(self.undo_floor[shard], record.version)
        return unreleased

    def records_since(self, shard: int, since: int) -> list[StepRecord] | None:
        """Records above ``since`` (oldest first), or None when history does not reach back."""
        if since < self.history_floor[shard]:
            return None
        newer = []
        for record in itertools.chain(reversed(self._undo[shard]), reversed(self._done[shard])):
            if record.version <= since:
                break
            newer.append(record)
        return newer[::-1]

    def _forget(self, record: StepRecord) -> None:
        """Drop a record already taken out of its shard's deques."""
        if record.has_undo:
            record.has_undo = False
            self.undo_rows -= record.rows
        record.forgotten = True
        self.history_rows -= record.rows

    def reset_shard(self, shard: int, version: int) -> None:
        """Forget a shard's records (its content was replaced wholesale at ``version``)."""
        for record in [*self._done[shard], *self._undo[shard]]:
            self._forget(record)
        self._done[shard].clear()
        self._undo[shard].clear()
        self.undo_floor[shard] = version
        self.history_floor[shard] = version
