"""The bounded history of steps: undo information and change history.

Every applied delta leaves one ``StepGroup``: one *part* per shard it stepped (a part is what
the old per-shard step record was). While a part holds undo information, its shard's step can
be rolled back by a pointer swap (see ``table.py``); once validated, or when the undo budget is
spent, its undo information is released. The part then stays as change history (which keys
changed at which version, for incremental catch-up) until the history budget is spent. Both
budgets are counted in rows, and released oldest first.

One group per delta, not one record per shard step: a 1,000-row delta over 64 shards made 64
records (apply's record keeping took ~0.21 ms, releasing them ~0.07 ms); a group costs a few
numpy operations over its parts (~0.05 ms, most of it grouping the rows by shard), and its undo
is released by one batch per table, the group's slots as they are when every part goes at once
(~0.02 ms). A group is split (a mask of its parts) only where a budget, a rollback of some of its
shards, a shard replacement or a watermark covering only some of its shards says so; every
answer (floors, budgets, what can be rolled back or read) is the one per-shard records gave.

``undo_floor[s]``: the oldest version shard ``s`` can be rolled back to (or read at).
``history_floor[s]``: the oldest version from which ``records_since`` can answer for shard ``s``.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class DenseValue:
    """A dense tensor with the version that wrote it."""

    array: npt.NDArray[np.floating]
    version: int


@dataclass(eq=False, slots=True)
class StepGroup:
    """What one applied delta changed, by part: part ``i`` is its step of shard ``shards[i]``.

    Per table, ``keys`` and ``slots`` hold the rows written, grouped by part (part ``i`` holds
    ``[offsets[i], offsets[i + 1])``): keys for change history, slots for undo
    (``table.slot_prev[slots]`` is the row each write replaced)."""

    shards: I64  # sorted
    bases: I64  # per part: packed version of the shard before the step
    versions: I64  # per part: packed version after it
    rows: I64  # per part: rows written (table rows + dense tensors), its weight in the budgets
    keys: dict[str, I64]
    slots: dict[str, I64]  # emptied once no part holds undo
    offsets: dict[str, I64]
    dense_part: int = -1  # index of the dense shard's part, -1 when the delta did not step it
    dense_prev: dict[str, DenseValue | None] = field(default_factory=dict)
    undo: Mask = field(init=False)  # per part: still holds undo information
    kept: Mask = field(init=False)  # per part: still in the history (not trimmed, rolled back
    # or reset); undo implies kept
    undo_parts: int = field(init=False)
    kept_parts: int = field(init=False)
    _shard_list: list[int] = field(init=False)

    def __post_init__(self) -> None:
        n = int(self.shards.size)
        self.undo = np.ones(n, dtype=bool)
        self.kept = np.ones(n, dtype=bool)
        self.undo_parts = self.kept_parts = n
        self._shard_list = self.shards.tolist()

    @property
    def shard_list(self) -> list[int]:
        return self._shard_list

    def part(self, shard: int) -> int:
        """Index of the part that stepped ``shard`` (the group must have stepped it)."""
        i = bisect.bisect_left(self._shard_list, shard)
        assert self._shard_list[i] == shard, "the group did not step this shard"
        return i

    def span(self, name: str, part: int) -> slice:
        """Where part ``part`` lies in ``keys[name]`` and ``slots[name]``."""
        offsets = self.offsets[name]
        return slice(int(offsets[part]), int(offsets[part + 1]))

    def rows_of(self, name: str, parts: Mask) -> Mask:
        """Mask over ``keys[name]`` / ``slots[name]`` of the rows of ``parts``."""
        return np.repeat(parts, np.diff(self.offsets[name]))


@dataclass(frozen=True, eq=False, slots=True)
class ShardStep:
    """One shard's part of a group, as the per-shard queries see it."""

    group: StepGroup
    index: int

    @property
    def base(self) -> int:
        return int(self.group.bases[self.index])

    @property
    def version(self) -> int:
        return int(self.group.versions[self.index])

    @property
    def has_undo(self) -> bool:
        return bool(self.group.undo[self.index])

    def table_keys(self, name: str) -> I64:
        """Keys this step wrote in table ``name`` (the delta must have carried it)."""
        return self.group.keys[name][self.group.span(name, self.index)]

    def slots(self, name: str) -> I64:
        """Slots this step wrote in table ``name`` (while it holds undo)."""
        return self.group.slots[name][self.group.span(name, self.index)]

    @property
    def dense_prev(self) -> dict[str, DenseValue | None]:
        """The dense values this step replaced (empty unless it is a dense step with undo)."""
        group = self.group
        return group.dense_prev if group.dense_part == self.index else {}


Released = tuple[StepGroup, Mask]  # a group and the parts whose undo was just released


class StepLog:
    """Step groups by shard and by age, with row budgets for undo and for change history.

    Per shard, ``_steps[s]`` holds the groups with a part kept in ``s``, oldest first; within a
    shard the parts holding undo are always the newest ones (undo is released oldest first per
    shard, by validation or by budget), and versions increase. ``_undo_order`` and
    ``_history_order`` hold every group by age for the budgets; groups with nothing left to
    count are skipped when they reach the front."""

    def __init__(self, n_shards: int, undo_rows_max: int, history_rows_max: int) -> None:
        self.undo_rows_max = undo_rows_max
        self.history_rows_max = max(history_rows_max, undo_rows_max)
        self._steps: list[deque[StepGroup]] = [deque() for _ in range(n_shards)]
        self._undo_order: deque[StepGroup] = deque()
        self._history_order: deque[StepGroup] = deque()
        self.undo_rows = 0
        self.history_rows = 0
        self.undo_floor: I64 = np.zeros(n_shards, dtype=np.int64)
        self.history_floor: I64 = np.zeros(n_shards, dtype=np.int64)
        self._undo_parts: I64 = np.zeros(n_shards, dtype=np.int64)  # per shard, holding undo
        self._to_release: deque[StepGroup] = deque()  # groups a validation has yet to look at
        self._blocked: Mask = np.zeros(n_shards, dtype=bool)  # shards it has nothing more for

    def append(self, group: StepGroup) -> None:
        for shard in group.shard_list:
            self._steps[shard].append(group)
        self._undo_order.append(group)
        self._history_order.append(group)
        rows = int(group.rows.sum())
        self.undo_rows += rows
        self.history_rows += rows
        self._undo_parts[group.shards] += 1

    def records(self, shard: int) -> Iterator[ShardStep]:
        """The shard's steps, oldest first."""
        return (ShardStep(group, group.part(shard)) for group in self._steps[shard])

    def _newest_first(self, shard: int) -> Iterator[ShardStep]:
        return (ShardStep(group, group.part(shard)) for group in reversed(self._steps[shard]))

    # -- undo --------------------------------------------------------------------------------

    def can_roll_back(self, shard: int, target: int) -> bool:
        """True when shard steps above ``target`` all hold undo and end exactly at it."""
        if target < self.undo_floor[shard]:
            return False
        for step in self._newest_first(shard):
            if step.version <= target:
                return step.version == target
            if not step.has_undo:
                return False
            if step.base <= target:
                return step.base == target
        return False  # history does not reach back to target

    def pop_newer(self, shard: int, target: int) -> list[ShardStep]:
        """Remove and return the shard's steps above ``target``, newest first (their parts
        leave the budgets; the caller reverts them)."""
        popped: list[ShardStep] = []
        steps = self._steps[shard]
        while steps:
            step = ShardStep(steps[-1], steps[-1].part(shard))
            if step.version <= target:
                break
            steps.pop()
            self._forget_part(step.group, step.index)
            popped.append(step)
        return popped

    def _release(self, group: StepGroup, parts: Mask) -> Released:
        """Release the undo of ``parts`` (all holding undo, each the oldest holding undo in its
        shard): the caller frees the rows their writes replaced; their shards cannot be read
        (nor rolled back) as of an older version any more. Oldest first per shard, never a
        newer part before an older one: releasing a write frees the slots the previous write
        of its keys filled, which the older part still names as its own."""
        shards = group.shards[parts]
        group.undo[parts] = False
        group.undo_parts -= int(shards.size)
        self.undo_rows -= int(group.rows[parts].sum())
        self._undo_parts[shards] -= 1
        self.undo_floor[shards] = np.maximum(self.undo_floor[shards], group.versions[parts])
        if group.dense_part >= 0 and not group.undo[group.dense_part]:
            group.dense_prev = {}
        return group, parts

    def begin_release(self) -> None:
        """Start releasing validated undo (``release_validated``): every group holding undo
        now will be looked at, oldest first."""
        self._to_release = deque(group for group in self._undo_order if group.undo_parts)
        self._blocked = self._undo_parts == 0

    @property
    def release_pending(self) -> bool:
        return bool(self._to_release)

    def release_validated(self, watermark: I64, max_parts: int | None = None) -> list[Released]:
        """Release the undo of steps at or below ``watermark`` (per shard) in the groups
        ``begin_release`` listed, oldest group first: about ``max_parts`` parts when given
        (a group is not split by this bound: at least one group per call, and a call may pass
        it by less than one group's parts; a group with nothing to release counts one).

        A group's parts above the watermark keep their undo; their shards are then done for
        this validation (versions increase within a shard), and the scan stops once every
        shard is done: it costs what it releases, not the whole undo log."""
        released: list[Released] = []
        pending, spent = self._to_release, 0
        while pending and (max_parts is None or spent < max_parts):
            group = pending.popleft()
            if not group.undo_parts:
                continue  # released by budget or forgotten since
            covered = group.undo & (group.versions <= watermark[group.shards])
            count = int(np.count_nonzero(covered))
            if count:
                released.append(self._release(group, covered))
            spent += max(count, 1)
            if group.undo_parts:
                self._blocked[group.shards[group.undo]] = True
                if (self._blocked | (self._undo_parts == 0)).all():
                    pending.clear()
        self._oldest_with_undo()  # drop the released ones from the front of the age order
        return released

    def release_over_budget(self) -> list[Released]:
        """Oldest steps holding undo, released until the undo budget holds."""
        released = []
        while self.undo_rows > self.undo_rows_max:
            oldest = self._oldest_with_undo()
            if oldest is None:
                break
            excess = self.undo_rows - self.undo_rows_max
            released.append(self._release(oldest, _first_parts(oldest.undo, oldest.rows, excess)))
        return released

    def _oldest_with_undo(self) -> StepGroup | None:
        order = self._undo_order
        while order and not order[0].undo_parts:
            order.popleft()
        return order[0] if order else None

    def _oldest_in_history(self) -> StepGroup | None:
        order = self._history_order
        while order and not order[0].kept_parts:
            order.popleft()
        return order[0] if order else None

    # -- history -----------------------------------------------------------------------------

    def trim_history(self) -> list[Released]:
        """Drop the oldest steps until the history budget holds; returns the parts that still
        held undo (the caller must release their undo information)."""
        unreleased = []
        while self.history_rows > self.history_rows_max:
            oldest = self._oldest_in_history()
            if oldest is None:
                break
            excess = self.history_rows - self.history_rows_max
            trimmed = _first_parts(oldest.kept, oldest.rows, excess)
            holding = trimmed & oldest.undo
            if holding.any():
                unreleased.append(self._release(oldest, holding))
            self._trim(oldest, trimmed)
        return unreleased

    def _trim(self, group: StepGroup, parts: Mask) -> None:
        """Drop ``parts`` (no undo left, each the oldest kept in its shard) from the history."""
        shards = group.shards[parts]
        for shard in shards.tolist():
            oldest = self._steps[shard].popleft()
            assert oldest is group, "history is trimmed oldest first"
        group.kept[parts] = False
        group.kept_parts -= int(shards.size)
        self.history_rows -= int(group.rows[parts].sum())
        versions = group.versions[parts]
        self.history_floor[shards] = np.maximum(self.history_floor[shards], versions)
        self.undo_floor[shards] = np.maximum(self.undo_floor[shards], versions)

    def records_since(self, shard: int, since: int) -> list[ShardStep] | None:
        """Steps above ``since`` (oldest first), or None when history does not reach back."""
        if since < self.history_floor[shard]:
            return None
        newer = []
        for step in self._newest_first(shard):
            if step.version <= since:
                break
            newer.append(step)
        return newer[::-1]

    def _forget_part(self, group: StepGroup, part: int) -> None:
        """Take one part (already out of its shard's deque) out of the budgets."""
        rows = int(group.rows[part])
        if group.undo[part]:
            group.undo[part] = False
            group.undo_parts -= 1
            self.undo_rows -= rows
            self._undo_parts[group.shards[part]] -= 1
        group.kept[part] = False
        group.kept_parts -= 1
        self.history_rows -= rows

    def reset_shard(self, shard: int, version: int) -> None:
        """Forget a shard's steps (its content was replaced wholesale at ``version``)."""
        for group in self._steps[shard]:
            part = group.part(shard)
            self._forget_part(group, part)
            if part == group.dense_part:
                group.dense_prev = {}
        self._steps[shard].clear()
        self.undo_floor[shard] = version
        self.history_floor[shard] = version

    # -- checks ------------------------------------------------------------------------------

    def check(self) -> None:
        """Check the log's invariants from scratch (tests); raises AssertionError."""
        listed: set[tuple[int, int]] = set()
        undo_parts = np.zeros_like(self._undo_parts)
        for shard, steps in enumerate(self._steps):
            last, undo_seen = -1, False
            for step in (ShardStep(group, group.part(shard)) for group in steps):
                listed.add((id(step.group), shard))
                assert step.group.kept[step.index], "a shard lists a part no longer kept"
                assert step.base < step.version and step.version > last, "versions not rising"
                assert not undo_seen or step.has_undo, "undo held by an older step only"
                undo_seen = step.has_undo
                undo_parts[shard] += step.has_undo
                last = step.version
        assert (undo_parts == self._undo_parts).all(), "per-shard undo part counts differ"
        groups = {id(g): g for g in (*self._history_order, *self._undo_order)}
        kept = {(i, s) for i, g in groups.items() for s in g.shards[g.kept].tolist()}
        assert kept == listed, "kept parts and per-shard lists differ"
        assert self.undo_rows == sum(int(g.rows[g.undo].sum()) for g in groups.values())
        assert self.history_rows == sum(int(g.rows[g.kept].sum()) for g in groups.values())
        for group in groups.values():
            assert not (group.undo & ~group.kept).any(), "undo held by a forgotten part"
            assert group.undo_parts == int(group.undo.sum()), "group undo count"
            assert group.kept_parts == int(group.kept.sum()), "group kept count"
            has_slots = group.slots.keys() == group.keys.keys()
            assert has_slots or not group.undo_parts, "undo held without its slots"


def _first_parts(parts: Mask, rows: I64, need: int) -> Mask:
    """The first of ``parts`` (in order) whose rows add up to ``need`` (all when they fall
    short)."""
    candidates = np.flatnonzero(parts)
    enough = int(np.searchsorted(np.cumsum(rows[candidates]), need)) + 1
    first = np.zeros(parts.size, dtype=bool)
    first[candidates[:enough]] = True
    return first
