"""Property tests of the data model (Foundation issue acceptance)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from p2prec.core.versions import VersionVector
from p2prec.model.layout import StoreLayout
from p2prec.model.snapshot import restore_shard, snapshot_shard, snapshot_shards
from p2prec.model.store import ParamStore
from p2prec.sim.lineage import Lineage, RefState, catch_up, generate

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
