"""Property tests of the data model (Foundation issue acceptance)."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2prec.core.versions import VersionVector
from p2prec.model.layout import StoreLayout
from p2prec.model.snapshot import restore_shard, snapshot_shard, snapshot_shards
from p2prec.model.store import ParamStore, UndoUnavailable
from p2prec.sim.lineage import Lineage, RefState, catch_up, generate
from p2prec.wire.messages import ParamDelta

LAYOUT = StoreLayout(row_shards=8, dim=4, tables=("user", "item"))
seeds = st.integers(0, 2**32 - 1)
steps = st.integers(1, 25)


def applied(lineage: Lineage, count: int | None = None) -> ParamStore:
    store = ParamStore(LAYOUT)
    for delta in lineage.deltas[:count]:
        store.apply(delta)
    return store


def reference_root(state: RefState) -> bytes:
    store = ParamStore(LAYOUT)
    store.apply(catch_up(LAYOUT, state))
    return store.root


def deliver_in_random_order(lineage: Lineage, rng: np.random.Generator) -> ParamStore:
    """One history among many that end with the same content: shard groups caught up in a
    random order, incremental deltas (some arriving after a gap), stale catch-ups, and finally
    the repair a node would ask for (everything since its vector)."""
    final = lineage.states[-1]
    groups = np.array_split(rng.permutation(LAYOUT.n_shards), int(rng.integers(1, 5)))
    pieces = [catch_up(LAYOUT, final, shards=[int(s) for s in g]) for g in groups]
    pieces += [lineage.deltas[int(i)] for i in rng.integers(0, len(lineage.deltas), 4)]
    pieces += [
        catch_up(LAYOUT, lineage.states[int(i)]) for i in rng.integers(0, len(lineage.states), 2)
    ]
    store = ParamStore(LAYOUT)
    for i in rng.permutation(len(pieces)):
        store.apply(pieces[i])
    store.apply(catch_up(LAYOUT, final, since=store.vector.packed))
    store.validate_state()
    return store


def content(store: ParamStore) -> list[tuple[str, list[int], list[int], bytes]]:
    keys = np.arange(-250, 250, dtype=np.int64)
    out = []
    for table in LAYOUT.tables:
        got = store.lookup(table, keys)
        out.append((table, got.found.tolist(), got.versions.tolist(), got.rows.tobytes()))
    return out


@settings(max_examples=60, deadline=None)
@given(seeds, steps, seeds)
def test_same_content_same_root_whatever_the_order(seed: int, n: int, order_seed: int) -> None:
    lineage = generate(LAYOUT, seed, n)
    in_order = applied(lineage)
    shuffled = deliver_in_random_order(lineage, np.random.default_rng(order_seed))
    assert content(shuffled) == content(in_order)
    assert shuffled.root == in_order.root
    assert shuffled.vector == in_order.vector


@settings(max_examples=60, deadline=None)
@given(seeds, steps, st.data())
def test_any_differing_row_changes_the_root(seed: int, n: int, data: st.DataObject) -> None:
    lineage = generate(LAYOUT, seed, n)
    store, other = applied(lineage), applied(lineage)
    table = data.draw(st.sampled_from(LAYOUT.tables))
    keys, _slots = other.tables[table].live_slots()
    if keys.size == 0:
        return
    i = data.draw(st.integers(0, keys.size - 1))
    key = int(keys[i])
    shard = int(other.tables[table].shard_of(keys[i : i + 1])[0])
    state = lineage.states[-1].copy()
    version, row = state.rows[table].pop(key)
    change = data.draw(st.sampled_from(["value", "version", "missing"]))
    if change == "value":
        row = row.copy()
        row[data.draw(st.integers(0, LAYOUT.dim - 1))] += 1.0
        state.rows[table][key] = (version, row)
    elif change == "version":
        state.rows[table][key] = (version - 1, row)
    fork = ParamStore(LAYOUT)
    fork.apply(catch_up(LAYOUT, state))
    assert fork.vector == store.vector
    assert fork.root != store.root
    assert store.merkle().diff(fork.merkle()) == [shard]


@settings(max_examples=60, deadline=None)
@given(seeds, steps, st.data())
def test_reapplying_a_delta_changes_nothing(seed: int, n: int, data: st.DataObject) -> None:
    lineage = generate(LAYOUT, seed, n)
    store = applied(lineage)
    root, vector = store.root, store.vector
    again = data.draw(st.integers(0, n - 1))
    result = store.apply(lineage.deltas[again])
    assert result.rows_written == 0 and not result.applied
    assert store.root == root and store.vector == vector


@settings(max_examples=60, deadline=None)
@given(seeds, steps, st.lists(st.integers(0, 10**6), min_size=1, max_size=40))
def test_row_versions_never_go_down(seed: int, n: int, choices: list[int]) -> None:
    """Deltas and catch-ups in any order, with gaps and duplicates: no row version drops."""
    lineage = generate(LAYOUT, seed, n)
    candidates = list(lineage.deltas)
    candidates += [catch_up(LAYOUT, s) for s in lineage.states[1:]]
    candidates += [catch_up(LAYOUT, lineage.states[-1], since=s.vector) for s in lineage.states]
    store = ParamStore(LAYOUT)
    probe = {t: np.arange(-200, 200, dtype=np.int64) for t in LAYOUT.tables}
    seen = {t: store.lookup(t, k).versions for t, k in probe.items()}
    for choice in choices:
        store.apply(candidates[choice % len(candidates)])
        for table, keys in probe.items():
            now = store.lookup(table, keys).versions
            assert (now >= seen[table]).all()
            seen[table] = now
    store.validate_state()
    store.apply(catch_up(LAYOUT, lineage.states[-1], since=store.vector.packed))
    assert store.root == reference_root(lineage.states[-1])


@settings(max_examples=60, deadline=None)
@given(seeds, steps, st.data())
def test_rollback_restores_the_root_of_any_vector_in_the_undo_window(
    seed: int, n: int, data: st.DataObject
) -> None:
    lineage = generate(LAYOUT, seed, n)
    validated_at = data.draw(st.integers(0, n))
    target = data.draw(st.integers(validated_at, n))
    store = ParamStore(LAYOUT)
    roots = [store.root]
    for i, delta in enumerate(lineage.deltas, start=1):
        store.apply(delta)
        roots.append(store.root)
        if i == validated_at:
            store.validate(store.vector)
    store.rollback(VersionVector(lineage.states[target].vector))
    store.validate_state()
    assert store.root == roots[target]
    assert store.vector == VersionVector(lineage.states[target].vector)
    # The lineage can continue from there: the same deltas re-apply on top.
    for delta in lineage.deltas[target:]:
        store.apply(delta)
    assert store.root == roots[-1]


@settings(max_examples=40, deadline=None)
@given(seeds, steps, seeds)
def test_snapshot_restore_round_trips_the_root(seed: int, n: int, other_seed: int) -> None:
    lineage = generate(LAYOUT, seed, n)
    source = applied(lineage)
    target = applied(generate(LAYOUT, other_seed, 5))  # restore over unrelated content
    for shard in range(LAYOUT.n_shards):
        restore_shard(target, snapshot_shard(source, shard))
    target.validate_state()
    assert target.root == source.root
    assert target.vector == source.vector
    assert target.merkle().diff(source.merkle()) == []


@settings(max_examples=40, deadline=None)
@given(seeds, steps, st.data())
def test_snapshot_at_a_past_version_equals_the_snapshot_taken_then(
    seed: int, n: int, data: st.DataObject
) -> None:
    """Canonical bytes: a node can serve the shard as it was at the watermark, byte for byte
    what the trainer hashed then (the basis of authenticated full-shard catch-up)."""
    lineage = generate(LAYOUT, seed, n)
    k = data.draw(st.integers(0, n))
    then = applied(lineage, k)
    now = applied(lineage)
    for shard in range(LAYOUT.n_shards):
        at = int(lineage.states[k].vector[shard])
        assert snapshot_shard(now, shard, at=at) == snapshot_shard(then, shard)


@settings(max_examples=30, deadline=None)
@given(seeds, steps, st.data())
def test_snapshots_of_many_shards_equal_one_shard_at_a_time(
    seed: int, n: int, data: st.DataObject
) -> None:
    """One index scan for many shards (checkpoints, validated heads) changes no byte."""
    store = applied(generate(LAYOUT, seed, n))
    shards = data.draw(st.lists(st.integers(0, LAYOUT.n_shards - 1), unique=True))
    batched = dict(snapshot_shards(store, shards))
    assert list(batched) == shards
    for shard in shards:
        assert batched[shard] == snapshot_shard(store, shard)
        one_scan = store.rows_of_shards([shard])[shard] if shard != LAYOUT.dense_shard else None
        if one_scan is not None:
            assert one_scan.digest == int(store.digests[shard])


# -- the step log against a reference model of per-shard step records -------------------------

LOG_LAYOUT = StoreLayout(row_shards=6, dim=2, tables=("user", "item"))
KEY_SPACE = 24


@dataclass(eq=False)
class RefStep:
    """One shard step, as the per-shard record model sees it."""

    shard: int
    base: int
    version: int
    rows: int
    undo: bool = True
    kept: bool = True


class RefLog:
    """Per-shard step records (what the store kept before step groups), with the budgets
    released oldest first (by record; a delta's records in shard order). A validation looks at
    the deltas that held undo when it began, oldest first, and releases their steps at or below
    the watermark: a slice of ``k`` looks at deltas until it has released ``k`` steps (a delta
    with none to release counts one)."""

    def __init__(self, n: int, undo_max: int, history_max: int) -> None:
        self.steps: list[list[RefStep]] = [[] for _ in range(n)]
        self.order: list[RefStep] = []
        self.undo_max, self.history_max = undo_max, max(history_max, undo_max)
        self.undo_floor, self.history_floor = [0] * n, [0] * n
        self.deltas: list[list[RefStep]] = []
        self.to_release: list[list[RefStep]] = []
        self.watermark = [0] * n

    def rows(self, undo: bool) -> int:
        return sum(s.rows for s in self.order if (s.undo if undo else s.kept))

    def append(self, delta: list[RefStep]) -> None:
        for step in delta:
            self.steps[step.shard].append(step)
            self.order.append(step)
        self.deltas.append(delta)

    def release(self, step: RefStep) -> None:
        step.undo = False
        self.undo_floor[step.shard] = max(self.undo_floor[step.shard], step.version)

    def enforce_budgets(self) -> None:
        while self.rows(undo=True) > self.undo_max:
            self.release(next(s for s in self.order if s.undo))
        while self.rows(undo=False) > self.history_max:
            oldest = next(s for s in self.order if s.kept)
            if oldest.undo:
                self.release(oldest)
            assert self.steps[oldest.shard].pop(0) is oldest
            oldest.kept = False
            for floor in (self.history_floor, self.undo_floor):
                floor[oldest.shard] = max(floor[oldest.shard], oldest.version)

    def validate(self, watermark: list[int]) -> None:
        self.watermark = watermark
        self.to_release = [d for d in self.deltas if any(s.undo for s in d)]

    def release_validated(self, max_steps: int | None = None) -> None:
        spent = 0
        while self.to_release and (max_steps is None or spent < max_steps):
            holding = [s for s in self.to_release.pop(0) if s.undo]
            if holding:
                covered = [s for s in holding if s.version <= self.watermark[s.shard]]
                for step in covered:
                    self.release(step)
                spent += max(len(covered), 1)

    def finish_release(self) -> None:
        self.release_validated()

    def can_roll_back(self, shard: int, target: int) -> bool:
        if target < self.undo_floor[shard]:
            return False
        for step in reversed(self.steps[shard]):
            if step.version <= target:
                return step.version == target
            if not step.undo:
                return False
            if step.base <= target:
                return step.base == target
        return False

    def forget_newer(self, shard: int, target: int) -> None:
        steps = self.steps[shard]
        while steps and steps[-1].version > target:
            step = steps.pop()
            step.undo = step.kept = False

    def reset(self, shard: int, version: int) -> None:
        self.forget_newer(shard, -1)
        self.undo_floor[shard] = self.history_floor[shard] = version


class LogScenario:
    """Drives a store and the reference through random operations on one lineage, checking
    after each that they agree and that every shard holds the lineage's content at its
    version."""

    def __init__(self, lineage: Lineage, undo_max: int, history_max: int) -> None:
        self.lineage = lineage
        self.store = ParamStore(LOG_LAYOUT, undo_rows_max=undo_max, history_rows_max=history_max)
        self.ref = RefLog(LOG_LAYOUT.n_shards, undo_max, history_max)
        self.watermark = [0] * LOG_LAYOUT.n_shards
        self.digest_at: dict[tuple[int, int], int] = {}
        for state in lineage.states:
            digests = ParamStore(LOG_LAYOUT)
            digests.apply(catch_up(LOG_LAYOUT, state))
            for shard in range(LOG_LAYOUT.n_shards):
                self.digest_at[(shard, int(state.vector[shard]))] = int(digests.digests[shard])
        self._snapshots: dict[tuple[int, int], bytes] = {}

    def state_vector(self, i: int) -> np.ndarray:
        return self.lineage.states[i].vector

    def apply(self, delta: ParamDelta) -> None:
        before = self._written_marks()
        vector = self.store.vector.packed.copy()
        result = self.store.apply(delta)
        after = self._written_marks()
        rows = np.zeros(LOG_LAYOUT.n_shards, dtype=np.int64)
        for table in LOG_LAYOUT.tables:
            changed = before[table] != after[table]
            keys = np.arange(-KEY_SPACE, KEY_SPACE, dtype=np.int64)[changed]
            np.add.at(rows, self.store.tables[table].shard_of(keys), 1)
        rows[LOG_LAYOUT.dense_shard] += sum(
            before["dense"].get(n) != v for n, v in after["dense"].items()
        )
        versions = self.store.vector.packed
        steps = [
            RefStep(s, int(vector[s]), int(versions[s]), int(rows[s]))
            for s in sorted(result.applied)
        ]
        if steps:
            self.ref.append(steps)
        self.ref.enforce_budgets()

    def _written_marks(self) -> dict[str, Any]:
        keys = np.arange(-KEY_SPACE, KEY_SPACE, dtype=np.int64)
        marks: dict[str, Any] = {t: self.store.lookup(t, keys).versions for t in LOG_LAYOUT.tables}
        marks["dense"] = {n: v.version for n, v in self.store.dense_values().items()}
        return marks

    def validate(self, watermark: np.ndarray, release_max: int | None) -> None:
        self.watermark = np.maximum(self.watermark, watermark).tolist()
        self.ref.validate(self.watermark)
        self.store.validate(VersionVector(watermark), release_max)
        self.ref.release_validated(release_max)
        if not self.store.release_pending:
            self.ref.finish_release()  # the store may stop early: nothing left to release

    def release_slice(self, max_records: int) -> None:
        pending = self.store.release_validated(max_records)
        self.ref.release_validated(max_records)
        if not pending:
            self.ref.finish_release()

    def rollback(self, to: np.ndarray) -> None:
        self.ref.finish_release()
        n = LOG_LAYOUT.n_shards
        vector = self.store.vector.packed
        above = [s for s in range(n) if vector[s] > to[s]]
        missing = [s for s in above if not self.ref.can_roll_back(s, int(to[s]))]
        assert self.store.can_roll_back(VersionVector(to)) == missing
        if missing:
            return
        for shard in range(n):
            self.ref.forget_newer(shard, int(to[shard]))
        self.store.rollback(VersionVector(to))
        self.watermark = np.minimum(self.watermark, np.maximum(to, 0)).tolist()

    def rollback_shard(self, shard: int, to: int) -> None:
        if self.store.vector.packed[shard] <= to:
            return  # nothing to undo: a pending release stays pending
        self.ref.finish_release()
        if not self.ref.can_roll_back(shard, to):
            with pytest.raises(UndoUnavailable):
                self.store.rollback_shard(shard, to)
            return
        self.store.rollback_shard(shard, to)
        self.ref.forget_newer(shard, to)
        self.watermark[shard] = min(self.watermark[shard], to)

    def replace_shard(self, shard: int, state: int) -> None:
        version = int(self.state_vector(state)[shard])
        key = (shard, state)
        if key not in self._snapshots:
            source = ParamStore(LOG_LAYOUT)
            source.apply(catch_up(LOG_LAYOUT, self.lineage.states[state]))
            self._snapshots[key] = snapshot_shard(source, shard)
        restore_shard(self.store, self._snapshots[key])
        self.ref.reset(shard, version)

    def check(self) -> None:
        store, ref, log = self.store, self.ref, self.store.log
        store.validate_state()
        vector = store.vector.packed
        for shard in range(LOG_LAYOUT.n_shards):
            assert int(store.digests[shard]) == self.digest_at[(shard, int(vector[shard]))]
        self.check_rows_held()
        assert log.undo_rows == ref.rows(undo=True)
        assert log.history_rows == ref.rows(undo=False)
        assert log.undo_floor.tolist() == ref.undo_floor
        assert log.history_floor.tolist() == ref.history_floor
        for shard in range(LOG_LAYOUT.n_shards):
            got = [(s.base, s.version, s.has_undo) for s in log.records(shard)]
            assert got == [(s.base, s.version, s.undo) for s in ref.steps[shard]]
            for since in {0, int(vector[shard]) - 1, int(ref.history_floor[shard])}:
                changes = store.changes_since(shard, since)
                assert (changes is None) == (since < ref.history_floor[shard])

    def check_rows_held(self) -> None:
        """Every slot in use holds a current row or one that a step holding undo replaced
        (nothing leaks, nothing is freed early)."""
        for name, table in self.store.tables.items():
            in_use = np.flatnonzero(table.slot_shard >= 0)
            keys, _slots = table.live_slots()
            held = table.slot_prev[in_use]
            assert in_use.size == keys.size + np.count_nonzero(held >= 0)
            undo_slots = [
                step.slots(name)
                for shard in range(LOG_LAYOUT.n_shards)
                for step in self.store.log.records(shard)
                if step.has_undo and name in step.group.slots
            ]
            undo = np.concatenate([np.zeros(0, np.int64), *undo_slots])
            replaced = table.slot_prev[undo]
            assert set(replaced[replaced >= 0].tolist()) == set(held[held >= 0].tolist())


@settings(max_examples=40, deadline=None)
@given(seeds, st.sampled_from([(10**6, 10**6), (12, 40), (30, 30), (6, 200)]), seeds)
def test_step_groups_agree_with_per_shard_records_under_any_interleaving(
    seed: int, budgets: tuple[int, int], ops_seed: int
) -> None:
    """Deltas and catch-ups over some shards each, validations at watermarks that cover some
    shards of a delta only (released at once or in slices, other operations in between),
    rollbacks of the store and of single shards, shard replacements and budget pressure: the
    step groups (one per delta) keep exactly the undo, history, floors and content that per-shard
    step records kept, and the store stays consistent."""
    lineage = generate(LOG_LAYOUT, seed, 40, rows_per_step=4, key_space=KEY_SPACE)
    scenario = LogScenario(lineage, *budgets)
    rng = np.random.default_rng(ops_seed)
    head = 0  # the next delta of the lineage to deliver
    for _ in range(70):
        head = random_operation(scenario, rng, head)
        scenario.check()


def random_operation(scenario: LogScenario, rng: np.random.Generator, head: int) -> int:
    """One operation near ``head`` (the next delta in order); returns the next head."""
    lineage, n = scenario.lineage, LOG_LAYOUT.n_shards
    last = len(lineage.deltas)
    near = int(np.clip(head + rng.integers(-4, 3), 0, last))
    op = rng.choice(["delta", "delta", "catch_up", "validate", "slice", "rollback", "shard"])
    if op == "delta" and head < last:
        scenario.apply(lineage.deltas[head if rng.random() < 0.8 else near % last])
        return head + 1
    if op == "catch_up":
        shards = [int(s) for s in rng.permutation(n)[: rng.integers(1, n + 1)]]
        since = scenario.store.vector.packed
        scenario.apply(catch_up(LOG_LAYOUT, lineage.states[near], since, shards))
    elif op == "validate":  # per shard the vector of a different state: covers some shards
        picks = np.clip(head + rng.integers(-5, 2, size=n), 0, last)
        watermark = np.array([scenario.state_vector(int(i))[s] for s, i in enumerate(picks)])
        scenario.validate(watermark, [None, 1, 2, 5][int(rng.integers(0, 4))])
    elif op == "slice" and scenario.store.release_pending:
        scenario.release_slice(int(rng.integers(1, 4)))
    elif op == "rollback":
        scenario.rollback(scenario.state_vector(min(near, head)))
        return min(near, head)
    elif op == "shard" and rng.random() < 0.3:
        scenario.replace_shard(int(rng.integers(0, n)), near)
    elif op == "shard":
        shard = int(rng.integers(0, n))
        steps, back = scenario.ref.steps[shard], int(rng.integers(1, 4))
        recent = steps[-back].base if len(steps) >= back else None
        to = int(scenario.state_vector(near)[shard]) if recent is None else recent
        scenario.rollback_shard(shard, to)
    return head
