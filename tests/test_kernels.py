"""The compiled kernels (``p2prec/model/_kernels.c``) against the numpy code they replace.

Peers compare digests, so a node with the compiled module and one without must compute the
same shards, hashes and digests bit for bit: each kernel is held to its numpy reference on
random and extreme input, and whole stores, one on each path, to the same roots.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2prec.core.versions import VersionVector
from p2prec.model import keyhash, keyindex, rowhash, store
from p2prec.model import table as store_table
from p2prec.model.kernels import NATIVE, Kernels
from p2prec.model.keyindex import ABSENT, DuplicateKeys, KeyIndex
from p2prec.model.layout import StoreLayout
from p2prec.model.store import ParamStore
from p2prec.model.table import EmbeddingTable, Written
from p2prec.sim.lineage import catch_up, generate
from p2prec.wire.messages import TableRows

I64 = npt.NDArray[np.int64]
NUMPY_PATH_MODULES = (keyhash, keyindex, rowhash, store, store_table)

needs_native = pytest.mark.skipif(
    NATIVE is None, reason="p2prec.model._kernels not built (no C compiler, or P2PREC_NATIVE=0)"
)
int64s = st.integers(-(2**63), 2**63 - 1)
seeds = st.integers(0, 2**32 - 1)


def native() -> Kernels:
    assert NATIVE is not None
    return NATIVE


def on_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until ``monkeypatch.undo()``, the callers run their numpy code (as without the module)."""
    for module in NUMPY_PATH_MODULES:
        monkeypatch.setattr(module, "NATIVE", None)


def test_kernels_are_built_where_a_c_compiler_is() -> None:
    """CI installs with gcc present: this keeps the compiled path from silently dropping out."""
    if os.environ.get("P2PREC_NATIVE") == "0":
        pytest.skip("P2PREC_NATIVE=0 turns the compiled kernels off")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the numpy code runs")
    assert NATIVE is not None, "a C compiler is here but p2prec.model._kernels was not built"


@needs_native
@settings(max_examples=60, deadline=None)
@given(st.lists(int64s, max_size=300), int64s, st.integers(1, 1000))
def test_shard_of_matches_numpy(keys: list[int], salt: int, row_shards: int) -> None:
    array = np.array(keys, dtype=np.int64)
    expected = (
        keyhash.mix64(array.view(np.uint64) ^ np.uint64(salt % 2**64)) % np.uint64(row_shards)
    ).astype(np.int64)
    out = np.empty(array.size, dtype=np.int64)
    native().shard_of(array, salt % 2**64, row_shards, out)
    assert out.tolist() == expected.tolist()


def batches(draw_keys: list[list[int]]) -> list[I64]:
    extremes = [-(2**63), 2**63 - 1, 0, -1, -2, -3]
    return [np.array(sorted(set(b + extremes[: len(b) % 7])), dtype=np.int64) for b in draw_keys]


@needs_native
@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.one_of(int64s, st.integers(-5, 60)), max_size=80), max_size=8))
def test_key_index_matches_its_numpy_path_through_growth(
    draws: list[list[int]],
) -> None:
    """The same map, batch by batch: positions may differ (batch inserts that collide are
    placed in another order), what each key finds may not."""
    fast, slow = KeyIndex(capacity_hint=4), KeyIndex(capacity_hint=4)
    with pytest.MonkeyPatch.context() as mp:
        for i, keys in enumerate(batches(draws)):
            fast_pos = fast.find_or_insert(keys)
            mp.setattr(keyindex, "NATIVE", None)
            slow_pos = slow.find_or_insert(keys)
            values = np.arange(keys.size, dtype=np.int64) * (i + 1) - 1  # ABSENT among them
            slow.set_values(slow_pos, values)
            probe = np.concatenate([keys, keys + 1])
            slow_found = slow.lookup(probe)
            mp.undo()
            assert fast._pairs[fast_pos, 0].tolist() == keys.tolist()
            assert fast.find(keys).tolist() == fast_pos.tolist()
            fast.set_values(fast_pos, values)
            assert fast.lookup(probe).tolist() == slow_found.tolist()
            assert len(fast) == len(slow) and fast.capacity == slow.capacity
            assert sorted(map(tuple, fast._pairs.tolist())) == sorted(
                map(tuple, slow._pairs.tolist())
            )


@needs_native
@pytest.mark.parametrize("twice", ["found", "new", "found and new"])
def test_duplicates_in_a_batch_are_refused_leaving_values_as_they_were(twice: str) -> None:
    index = KeyIndex()
    index.set_values(index.find_or_insert(np.array([1, 2, 3])), np.array([10, 20, 30]))
    before = index._pairs[:, 1][index._pairs[:, 1] != -2].copy()
    batch = {"found": [2, 5, 2], "new": [7, 1, 8, 7], "found and new": [9, 3, 9, 3]}[twice]
    with pytest.raises(DuplicateKeys):
        index.find_or_insert(np.array(batch))
    assert index.lookup(np.array([1, 2, 3])).tolist() == [10, 20, 30]
    assert index.lookup(np.array(batch)).tolist() == [
        {1: 10, 2: 20, 3: 30}.get(k, ABSENT) for k in batch
    ]
    live = index._pairs[:, 1]
    assert (live[live != -2] >= ABSENT).all(), "a transient tag was left behind"
    assert len(index) == int((live != -2).sum())
    assert sorted(v for v in live[live >= 0].tolist()) == sorted(before[before >= 0].tolist())


@needs_native
@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["float16", "float32", "float64"]),
    st.integers(1, 70),
    st.integers(0, 40),
    int64s,
    seeds,
)
def test_row_hashes_match_numpy_for_every_word_width(
    dtype: str, dim: int, n: int, salt: int, seed: int
) -> None:
    """Rows of 2 to 560 bytes: words of 8, 4 and 2 bytes (float16 of odd dim: 2)."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    versions = rng.integers(0, 2**62, n, dtype=np.int64)
    rows = rng.standard_normal((n, dim)).astype(dtype)
    fast = rowhash.row_hashes(np.uint64(salt % 2**64), keys, versions, rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rowhash, "NATIVE", None)
        slow = rowhash.row_hashes(np.uint64(salt % 2**64), keys, versions, rows)
    assert fast.dtype == slow.dtype == np.uint64
    assert fast.tolist() == slow.tolist()


@needs_native
def test_row_hashes_of_a_strided_view_equal_those_of_its_copy() -> None:
    rows = np.arange(40 * 8, dtype=np.float32).reshape(40, 8)
    view = rows[::2, :]  # not contiguous: hashed as its contiguous copy
    keys = np.arange(20, dtype=np.int64)
    versions = np.ones(20, dtype=np.int64)
    salt = np.uint64(5)
    assert (
        rowhash.row_hashes(salt, keys, versions, view).tolist()
        == rowhash.row_hashes(salt, keys, versions, view.copy()).tolist()
    )


@needs_native
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.integers(1, 70), seeds)
def test_group_by_shard_matches_numpy(n: int, n_shards: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layout = StoreLayout(row_shards=n_shards, dim=2, tables=("t",))
    table = EmbeddingTable("t", 2, layout.np_dtype, n_shards, capacity_rows=64)
    table.slot_hash[:] = rng.integers(0, 2**64 - 1, table.capacity, dtype=np.uint64)
    written = Written(
        slots=rng.integers(0, table.capacity, n, dtype=np.int64),
        prev=rng.integers(-1, table.capacity, n, dtype=np.int64),
        shards=rng.integers(0, n_shards, n, dtype=np.int64),
        keys=rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64),
        hashes=rng.integers(0, 2**64 - 1, n, dtype=np.uint64),
    )
    fast = store._group_native(table, written, n_shards)
    slow = store._group(table, written, n_shards)
    for got, want in zip(fast, slow, strict=True):
        assert got.dtype == want.dtype
        assert got.tolist() == want.tolist()


@needs_native
@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(1, 25), st.data())
def test_stores_on_both_paths_keep_equal_digests_through_apply_validate_and_rollback(
    seed: int, n: int, data: st.DataObject
) -> None:
    """What peers compare: a node with the kernels and one without agree at every step."""
    layout = StoreLayout(row_shards=8, dim=3, tables=("user", "item"))
    lineage = generate(layout, seed, n, rows_per_step=data.draw(st.integers(1, 40)))
    validated_at = data.draw(st.integers(0, n))
    target = data.draw(st.integers(validated_at, n))
    fast, slow = ParamStore(layout), ParamStore(layout)
    with pytest.MonkeyPatch.context() as mp:
        for i, delta in enumerate(lineage.deltas, start=1):
            for s, numpy_only in ((fast, False), (slow, True)):
                if numpy_only:
                    on_numpy_path(mp)
                s.apply(delta)
                s.apply(delta)  # a duplicate changes nothing, on either path
                if i == validated_at:
                    s.validate(s.vector)
                mp.undo()
            assert fast.digests.tolist() == slow.digests.tolist()
        on_numpy_path(mp)
        slow.rollback(VersionVector(lineage.states[target].vector))
        slow.validate_state()
        mp.undo()
    fast.rollback(VersionVector(lineage.states[target].vector))
    fast.validate_state()
    assert fast.root == slow.root
    assert fast.vector == slow.vector


@needs_native
@settings(max_examples=80, deadline=None)
@given(st.integers(0, 200), st.integers(1, 40), seeds)
def test_row_plan_matches_numpy_with_every_shard_status(n: int, row_shards: int, seed: int) -> None:
    """Which rows apply, and which problem is named first, for random steps and statuses."""
    rng = np.random.default_rng(seed)
    table = EmbeddingTable("t", 2, np.dtype(np.float32), row_shards)
    status = rng.integers(0, 4, row_shards + 1).astype(np.int64)
    if rng.random() < 0.5:
        status[status == 0] = 3  # often no row outside a stepped shard
    bases = rng.integers(0, 5, row_shards + 1).astype(np.int64)
    steps = np.stack([bases, bases + rng.integers(1, 4, row_shards + 1)])
    keys = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    shard_tops = steps[1, table.shard_of(keys)]
    versions = shard_tops - rng.integers(0, 3 if rng.random() < 0.5 else 2, n)
    rows = TableRows(keys, versions, np.zeros((n, 2), dtype=np.float32))
    fast = store._plan_rows_native(table, rows, status, steps)
    slow = store._plan_rows(table, rows, status, steps)
    assert fast[0].tolist() == slow[0].tolist()
    assert fast[2] == slow[2]
    if not slow[2]:
        assert (fast[1] is None) == (slow[1] is None)
        if fast[1] is not None and slow[1] is not None:
            assert fast[1].tolist() == slow[1].tolist()


@needs_native
@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(2, 20), seeds)
def test_stores_on_both_paths_agree_when_rows_arrive_stale_and_out_of_order(
    seed: int, n: int, order_seed: int
) -> None:
    """Catch-ups of some shards, old deltas and stale catch-ups in a random order: rows older
    than the one held are skipped the same way on both paths."""
    layout = StoreLayout(row_shards=8, dim=3, tables=("user", "item"))
    lineage = generate(layout, seed, n, rows_per_step=12, key_space=60)
    rng = np.random.default_rng(order_seed)
    final = lineage.states[-1]
    pieces = [catch_up(layout, final, shards=[int(s) for s in rng.choice(8, 3, replace=False)])]
    pieces += [lineage.deltas[int(i)] for i in rng.integers(0, n, 6)]
    pieces += [catch_up(layout, lineage.states[int(i)]) for i in rng.integers(0, n + 1, 3)]
    fast, slow = ParamStore(layout), ParamStore(layout)
    with pytest.MonkeyPatch.context() as mp:
        for i in rng.permutation(len(pieces)):
            fast_result = fast.apply(pieces[i])
            on_numpy_path(mp)
            slow_result = slow.apply(pieces[i])
            mp.undo()
            assert fast_result == slow_result
            assert fast.digests.tolist() == slow.digests.tolist()
        on_numpy_path(mp)
        slow.validate_state()
        mp.undo()
    fast.validate_state()
    assert fast.root == slow.root


@needs_native
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 120), seeds)
def test_only_rows_newer_than_the_held_one_are_written_on_both_paths(n: int, seed: int) -> None:
    """Rows older than, as old as and newer than the key's current row, and keys without
    one: the same rows pass the filter, with the same current slots."""
    rng = np.random.default_rng(seed)
    table = EmbeddingTable("t", 2, np.dtype(np.float32), 4)
    held = np.arange(n, dtype=np.int64)
    held_versions = rng.integers(1, 5, n).astype(np.int64)
    slots = table.load_rows(held, held_versions, np.zeros((n, 2), np.float32), 0)
    table.index.set_values(table.index.find(held[: n // 3]), np.full(n // 3, ABSENT))
    keys = np.concatenate([held, held + n])  # the second half never seen
    versions = np.concatenate([held_versions, held_versions]) + rng.integers(-1, 2, 2 * n)
    positions = table.positions(keys)
    fast = table._current_and_newer(positions, versions)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_table, "NATIVE", None)
        slow = table._current_and_newer(positions, versions)
    assert fast[0].tolist() == slow[0].tolist()
    assert fast[0][n // 3 : n].tolist() == slots[n // 3 :].tolist()
    assert (fast[1] is None) == (slow[1] is None)
    if fast[1] is not None and slow[1] is not None:
        assert fast[1].tolist() == slow[1].tolist()


@needs_native
def test_bad_buffers_raise_clear_errors_and_change_nothing() -> None:
    k = native()
    pairs = np.full((8, 2), -2, dtype=np.int64)
    keys = np.array([1, 2, 3], dtype=np.int64)
    out = np.empty(3, dtype=np.int64)
    with pytest.raises(ValueError, match="power of two"):
        k.find_or_insert(np.full((6, 2), -2, dtype=np.int64), keys, out)
    with pytest.raises(ValueError, match="differ in length"):
        k.probe(pairs, keys, out, np.empty(2, dtype=np.int64))
    with pytest.raises(ValueError, match="8-byte items"):
        k.shard_of(np.zeros(3, dtype=np.int32), 1, 4, out)
    with pytest.raises((BufferError, ValueError), match="contiguous"):
        k.shard_of(np.zeros(6, dtype=np.int64)[::2], 1, 4, out)
    read_only = np.empty(3, dtype=np.int64)
    read_only.flags.writeable = False
    with pytest.raises((BufferError, ValueError)):
        k.probe(pairs, keys, read_only, out)
    with pytest.raises(ValueError, match="positive"):
        k.shard_of(keys, 1, 0, out)
    shards = np.array([0, 5], dtype=np.int64)
    with pytest.raises(IndexError, match="out of range"):
        k.group_by_shard(
            shards,
            np.zeros(2, np.uint64),
            np.array([-1, 0], dtype=np.int64),
            np.zeros(4, np.uint64),
            np.empty(2, np.int64),
            np.empty(5, np.int64),
            np.empty(4, np.uint64),
        )
    assert (pairs == -2).all()


@needs_native
def test_a_full_table_raises_instead_of_looping() -> None:
    pairs = np.stack([np.arange(4, dtype=np.int64), np.zeros(4, dtype=np.int64)], axis=1)
    with pytest.raises(RuntimeError, match="full"):
        native().find_or_insert(pairs, np.array([99], dtype=np.int64), np.empty(1, np.int64))
    found, empty_at = np.empty(1, np.int64), np.empty(1, np.int64)
    native().probe(pairs, np.array([99], dtype=np.int64), found, empty_at)
    assert found.tolist() == empty_at.tolist() == [-1]
