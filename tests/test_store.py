"""Unit tests of the parameter store's rules: gaps, bad deltas, reads, budgets, catch-up."""

import numpy as np
import pytest

from p2prec.core.versions import Version, VersionVector
from p2prec.model.layout import StoreLayout
from p2prec.model.snapshot import SnapshotError, restore_shard, snapshot_shard
from p2prec.model.store import InvalidDelta, ParamStore, UndoUnavailable
from p2prec.sim.lineage import catch_up, generate
from p2prec.wire.messages import ParamDelta, TableRows

LAYOUT = StoreLayout(row_shards=4, dim=3, tables=("user", "item"))
V1, V2, V3 = (Version(1, s).packed for s in (1, 2, 3))


def rows_delta(
    keys: list[int], base: int, version: int, value: float = 1.0, table: str = "user"
) -> ParamDelta:
    k = np.array(keys, dtype=np.int64)
    shards = sorted({int(s) for s in ParamStore(LAYOUT).tables[table].shard_of(k)})
    return ParamDelta(
        tuple(shards),
        (base,) * len(shards),
        (version,) * len(shards),
        {table: TableRows(k, np.full(k.size, version), np.full((k.size, 3), value, np.float32))},
    )


def test_a_delta_past_a_gap_is_reported_and_not_applied() -> None:
    store = ParamStore(LAYOUT)
    result = store.apply(rows_delta([1, 2, 3], V1, V2))
    assert result.gaps and not result.applied and result.rows_written == 0
    assert store.lookup("user", [1, 2, 3]).found.tolist() == [False] * 3
    assert store.apply(rows_delta([1, 2, 3], 0, V1)).applied
    assert store.apply(rows_delta([1, 2, 3], V1, V2, value=2.0)).applied
    assert store.lookup("user", [1]).rows.tolist() == [[2.0] * 3]


@pytest.mark.parametrize("mutate", ["table", "outside", "version", "duplicate", "dim", "dtype"])
def test_bad_deltas_are_refused_whole(mutate: str) -> None:
    store = ParamStore(LAYOUT)
    store.apply(rows_delta([10, 11], 0, V1))
    root, vector = store.root, store.vector
    good = rows_delta([1, 2, 3, 4, 5, 6, 7], 0, V1)
    t = good.tables["user"]
    tables = {"user": t, "item": TableRows(t.keys, t.versions, t.rows)}
    shards, bases, versions = good.shards, good.bases, good.versions
    if mutate == "table":
        tables["nope"] = t
    elif mutate == "outside":
        shards, bases, versions = shards[:1], bases[:1], versions[:1]
    elif mutate == "version":
        tables["item"] = TableRows(t.keys, t.versions + 1, t.rows)
    elif mutate == "duplicate":
        tables["item"] = TableRows(np.r_[t.keys[:-1], t.keys[:1]], t.versions, t.rows)
    elif mutate == "dim":
        tables["item"] = TableRows(t.keys, t.versions, np.zeros((len(t), 2), np.float32))
    elif mutate == "dtype":
        tables["item"] = TableRows(t.keys, t.versions, np.zeros((len(t), 3), np.int32))
    with pytest.raises(InvalidDelta):
        store.apply(ParamDelta(shards, bases, versions, tables))
    assert store.root == root and store.vector == vector
    assert not store.lookup("user", t.keys).found.any()
    store.validate_state()


def test_lookup_reports_missing_keys_and_copies_rows() -> None:
    store = ParamStore(LAYOUT)
    store.apply(rows_delta([5, -(2**63), 2**63 - 1], 0, V1, value=3.0))
    got = store.lookup("user", [5, 6, -(2**63), 2**63 - 1])
    assert got.found.tolist() == [True, False, True, True]
    assert got.rows[1].tolist() == [0.0] * 3
    assert got.versions[1] == -1
    got.rows[0] = 99.0
    assert store.lookup("user", [5]).rows[0, 0] == 3.0
    assert not store.lookup("item", [5]).found.any()


def test_validated_reads_never_see_rows_above_the_watermark() -> None:
    lineage = generate(LAYOUT, seed=3, steps=30, key_space=40)
    store = ParamStore(LAYOUT)
    keys = np.arange(-40, 40)
    for i, delta in enumerate(lineage.deltas, start=1):
        store.apply(delta)
        if i % 7 == 0:
            store.validate(store.vector)
            watermark_state = lineage.states[i]
        if i >= 7:
            for table in LAYOUT.tables:
                got = store.lookup(table, keys, validated=True)
                expected = watermark_state.rows[table]
                assert got.found.tolist() == [int(k) in expected for k in keys]
                for k, row, v in zip(
                    keys[got.found], got.rows[got.found], got.versions[got.found], strict=True
                ):
                    assert v == expected[int(k)][0]
                    assert row.tolist() == expected[int(k)][1].tolist()
            dense = store.dense_tensors(validated=True)
            assert dense.keys() == watermark_state.dense.keys()
            for name, arr in dense.items():
                assert arr.tolist() == watermark_state.dense[name][1].tolist()


def test_undo_budget_bounds_rollback_and_refuses_it_whole() -> None:
    lineage = generate(LAYOUT, seed=5, steps=40, rows_per_step=6)
    store = ParamStore(LAYOUT, undo_rows_max=60, history_rows_max=1000)
    for delta in lineage.deltas:
        store.apply(delta)
    assert store.log.undo_rows <= 60
    root, vector = store.root, store.vector
    with pytest.raises(UndoUnavailable) as err:
        store.rollback(VersionVector(lineage.states[1].vector))
    assert err.value.shards
    assert store.root == root and store.vector == vector
    recent = VersionVector(lineage.states[38].vector)
    assert store.can_roll_back(recent) == []
    store.rollback(recent)
    store.validate_state()
    assert store.root == _root_of(lineage.states[38])


def test_validation_releases_undo_below_the_watermark() -> None:
    lineage = generate(LAYOUT, seed=6, steps=20)
    store = ParamStore(LAYOUT)
    for delta in lineage.deltas[:10]:
        store.apply(delta)
    store.validate(store.vector)
    assert store.log.undo_rows == 0
    in_use = sum(t.slots_in_use for t in store.tables.values())
    assert in_use == sum(store.row_count(t) for t in LAYOUT.tables)  # old rows were freed
    with pytest.raises(UndoUnavailable):
        store.rollback(VersionVector(lineage.states[5].vector))
    for delta in lineage.deltas[10:]:
        store.apply(delta)
    store.rollback(VersionVector(lineage.states[10].vector))
    assert store.root == _root_of(lineage.states[10])


def test_changes_since_serves_recent_versions_and_refuses_trimmed_history() -> None:
    lineage = generate(LAYOUT, seed=8, steps=40)
    store = ParamStore(LAYOUT, undo_rows_max=50, history_rows_max=120)
    for delta in lineage.deltas:
        store.apply(delta)
    assert store.log.history_rows <= 120
    behind = lineage.states[36]
    lagging = ParamStore(LAYOUT)
    lagging.apply(catch_up(LAYOUT, behind))
    for shard in range(LAYOUT.n_shards):
        changes = store.changes_since(shard, int(behind.vector[shard]))
        assert changes is not None
        lagging.apply(
            ParamDelta(
                (shard,), (changes.since,), (changes.version,), changes.tables, changes.dense
            )
            if changes.version > changes.since
            else ParamDelta((), (), ())
        )
    assert lagging.root == store.root
    assert any(store.changes_since(s, 0) is None for s in range(LAYOUT.n_shards))


def test_snapshot_rejects_corruption_without_raising_anything_else() -> None:
    store = ParamStore(LAYOUT)
    for delta in generate(LAYOUT, seed=9, steps=10).deltas:
        store.apply(delta)
    good = snapshot_shard(store, 1)
    rng = np.random.default_rng(0)
    rejected = 0
    for _ in range(300):
        data = bytearray(good)
        kind = rng.integers(0, 3)
        if kind == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        target = ParamStore(LAYOUT)
        target.apply(rows_delta([1, 2, 3, 4], 0, V1))
        before = target.root
        try:
            restore_shard(target, bytes(data))
        except SnapshotError:
            rejected += 1
            assert target.root == before  # a bad snapshot changes nothing
    assert rejected > 250
    restore_shard(ParamStore(LAYOUT), good)


def _root_of(state: object) -> bytes:
    from p2prec.sim.lineage import RefState

    assert isinstance(state, RefState)
    store = ParamStore(LAYOUT)
    store.apply(catch_up(LAYOUT, state))
    return store.root


def test_shard_rows_come_sorted_by_key_now_and_as_of_an_older_version() -> None:
    """A scan groups rows by shard; each shard's rows are read sorted by key (the canonical
    snapshot order), whether read as of now or through the undo chain as of an older version."""
    lineage = generate(LAYOUT, seed=11, steps=8)
    store = ParamStore(LAYOUT)
    for delta in lineage.deltas:
        store.apply(delta)
    older = lineage.states[4].vector
    for shard in range(LAYOUT.row_shards):
        for at in (None, int(older[shard])):
            for name, rows in store.shard_rows(shard, at).items():
                assert rows.keys.size, (shard, name)
                assert np.all(np.diff(rows.keys) > 0), (shard, at, name)
                expected = lineage.states[8 if at is None else 4].rows[name]
                assert sorted(rows.keys.tolist()) == sorted(
                    k for k in expected if store.tables[name].shard_of(np.array([k]))[0] == shard
                )


def test_a_validation_that_frees_scanned_rows_voids_the_scan() -> None:
    """A scan points at slots; a validation above the scan's versions frees the rows the newer
    writes replaced (the scanned ones). The scan must say so (``readable`` false) rather than
    read slots that a later write may reuse; a validation at or below it leaves it readable."""
    lineage = generate(LAYOUT, seed=5, steps=6)
    store = ParamStore(LAYOUT)
    for delta in lineage.deltas[:3]:
        store.apply(delta)
    scan = store.scan_shards(range(LAYOUT.row_shards))
    before = {s: snapshot_shard(store, s) for s in range(LAYOUT.row_shards)}
    store.validate(store.vector)  # at the scan's versions: nothing it reads is freed
    assert all(scan.readable(store, s) for s in range(LAYOUT.row_shards))
    for delta in lineage.deltas[3:]:
        store.apply(delta)
    stepped = [s for s in range(LAYOUT.row_shards) if store.vector.packed[s] > scan.at[s]]
    assert stepped and all(scan.readable(store, s) for s in stepped)  # old rows kept for undo
    assert all(store.can_read_at(s, int(scan.at[s])) for s in stepped)
    assert all(snapshot_shard(store, s, int(scan.at[s])) == before[s] for s in stepped)
    store.validate(store.vector)
    assert not any(scan.readable(store, s) for s in stepped)
    assert not any(store.can_read_at(s, int(scan.at[s])) for s in stepped)


def test_a_validation_released_in_slices_ends_as_one_released_at_once() -> None:
    """``validate(w, release_max)`` frees about that many shard steps now (whole deltas) and
    the rest by ``release_validated`` slices (a node spreads them over loop turns): the end
    state, undo budget, readable versions and what can be rolled back, equals an eager
    release."""
    lineage = generate(LAYOUT, seed=6, steps=12)
    eager, stepped = ParamStore(LAYOUT), ParamStore(LAYOUT)
    for store in (eager, stepped):
        for delta in lineage.deltas[:9]:
            store.apply(delta)
    watermark = VersionVector(lineage.states[7].vector)
    before = stepped.log.undo_rows
    eager.validate(watermark)
    stepped.validate(watermark, release_max=3)
    assert pending(stepped) and eager.log.undo_rows < stepped.log.undo_rows < before
    slices = 0
    while stepped.release_validated(3):
        slices += 1
    assert slices >= 2 and not pending(stepped)
    with pytest.raises(ValueError, match="at least 1"):
        stepped.release_validated(0)  # would never finish
    assert stepped.log.undo_rows == eager.log.undo_rows
    assert (stepped.log.undo_floor == eager.log.undo_floor).all()
    stepped.validate_state()
    for target in (lineage.states[6].vector, lineage.states[7].vector):
        assert stepped.can_roll_back(VersionVector(target)) == eager.can_roll_back(
            VersionVector(target)
        )


def test_a_rollback_finishes_a_pending_release_first() -> None:
    """Undo at or below the watermark is gone once validated, even while its release is
    pending: a rollback below the watermark is refused as after an eager release."""
    lineage = generate(LAYOUT, seed=7, steps=10)
    store = ParamStore(LAYOUT)
    for delta in lineage.deltas[:8]:
        store.apply(delta)
    store.validate(VersionVector(lineage.states[6].vector), release_max=1)
    assert pending(store)
    below = VersionVector(lineage.states[3].vector)
    assert store.can_roll_back(below)  # undo below the watermark: released, cannot restore
    assert not pending(store)
    with pytest.raises(UndoUnavailable):
        store.rollback(below)
    assert store.rollback(VersionVector(lineage.states[6].vector))  # to the watermark: fine


def pending(store: ParamStore) -> bool:
    """``store.release_pending``, read through a call (mypy narrows a property it has seen)."""
    return store.release_pending


@pytest.mark.parametrize(("undo_max", "history_max"), [(10**6, 10**6), (40, 80)])
def test_the_budget_orders_hold_only_what_the_budgets_still_count(
    undo_max: int, history_max: int
) -> None:
    """The undo and history age orders skip released and forgotten step groups lazily: over
    many validations (large budgets), budget releases and trims (small ones) and a rollback
    they stay as long as what they still count."""
    lineage = generate(LAYOUT, seed=9, steps=60)
    store = ParamStore(LAYOUT, undo_rows_max=undo_max, history_rows_max=history_max)
    for i, delta in enumerate(lineage.deltas):
        store.apply(delta)
        if i % 7 == 6:
            store.validate(store.vector)
    store.rollback(VersionVector(lineage.states[-2].vector))  # forgets the last step
    log = store.log
    steps = [step for s in range(LAYOUT.n_shards) for step in log.records(s)]
    with_undo = len({id(step.group) for step in steps if step.has_undo})
    kept = len({id(step.group) for step in steps})
    assert log.undo_rows <= undo_max and log.history_rows <= max(undo_max, history_max)
    slack = 7  # at most the groups since the last validation
    assert len(log._undo_order) <= with_undo + slack < len(lineage.deltas)
    assert len(log._history_order) <= kept + slack
    store.validate_state()


def test_a_delta_leaves_one_step_group_released_whole() -> None:
    """One group per applied delta, whatever the shards it steps; a validation covering all of
    them releases it whole, one covering some keeps the rest of its undo (those shards can
    still be rolled back) until a later one covers them."""
    lineage = generate(LAYOUT, seed=4, steps=3, rows_per_step=12)
    store = ParamStore(LAYOUT)
    for delta in lineage.deltas:
        store.apply(delta)
    first, last = lineage.deltas[0], lineage.deltas[-1]
    assert len(first.shards) > 1 and len(last.shards) > 1
    log = store.log
    assert len(log._undo_order) == len(lineage.deltas)
    group = next(iter(log.records(first.shards[0]))).group
    assert group.shard_list == sorted(first.shards)
    store.validate(VersionVector(lineage.states[1].vector))
    assert not group.undo.any() and not group.slots and group.keys
    partial = lineage.states[2].vector.copy()
    kept_back = last.shards[0]
    partial[kept_back] = lineage.states[2].vector[kept_back]
    partial[list(last.shards[1:])] = lineage.states[3].vector[list(last.shards[1:])]
    store.validate(VersionVector(partial))
    newest = list(log.records(kept_back))[-1]
    assert newest.has_undo and newest.group.undo_parts == 1
    assert store.log.can_roll_back(kept_back, newest.base)
    assert not store.can_read_at(last.shards[1], int(lineage.states[2].vector[last.shards[1]]))
    store.validate_state()
    store.validate(VersionVector(lineage.states[3].vector))
    assert not newest.group.undo.any() and log.undo_rows == 0
    store.validate_state()
