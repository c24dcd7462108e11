"""A scan of the key indexes in slices (``ScanJob``) while deltas keep being applied: it reads
each shard exactly as it was when the job began, and says when the store changed under it in a
way its slices cannot follow."""

from __future__ import annotations

import numpy as np
import pytest

from p2prec.core.versions import VersionVector
from p2prec.model.layout import StoreLayout
from p2prec.model.scan import ScanJob, ScanVoided
from p2prec.model.store import ParamStore, ShardRows
from p2prec.sim.lineage import generate

LAYOUT = StoreLayout(row_shards=4, dim=3, tables=("user", "item"))
SHARDS = range(LAYOUT.row_shards)


def applied(deltas: int, seed: int, capacity_rows: int = 4096) -> ParamStore:
    store = ParamStore(LAYOUT, capacity_rows=capacity_rows)
    for delta in generate(LAYOUT, seed, deltas).deltas:
        store.apply(delta)
    return store


def same_rows(got: ShardRows, expected: ShardRows) -> bool:
    return got.digest == expected.digest and all(
        np.array_equal(got.tables[name].keys, rows.keys)
        and np.array_equal(got.tables[name].versions, rows.versions)
        and np.array_equal(got.tables[name].rows, rows.rows)
        for name, rows in expected.tables.items()
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_scan_in_slices_reads_the_store_as_it_was_when_it_began(seed: int) -> None:
    """Deltas between the slices update scanned and unscanned keys and add new keys: the
    scan walks the newer rows back and leaves the new keys out."""
    lineage = generate(LAYOUT, seed, 16)
    store = ParamStore(LAYOUT, capacity_rows=4096)
    for delta in lineage.deltas[:8]:
        store.apply(delta)
    then = store.rows_of_shards(SHARDS)
    job = ScanJob(store, SHARDS, step_positions=16)
    later = iter(lineage.deltas[8:])
    steps = 0
    while (scan := job.step()) is None:
        steps += 1
        if (following := next(later, None)) is not None:
            store.apply(following)
    assert steps > 8  # many slices, with deltas in between
    assert store.vector != VersionVector(scan.at)  # the store moved on meanwhile
    for shard in SHARDS:
        assert scan.readable(store, shard)
        assert same_rows(store.rows_from_scan(scan, shard), then[shard]), shard


def test_a_scan_at_once_equals_one_in_slices() -> None:
    store = applied(10, seed=4)
    at_once = store.scan_shards([0, 2])
    sliced = ScanJob(store, [0, 2], step_positions=8).run()
    for shard in (0, 2):
        assert same_rows(store.rows_from_scan(sliced, shard), store.rows_from_scan(at_once, shard))
    assert not sliced.tables["user"].pieces.keys() - {0, 2}  # only the shards asked for


def test_a_scan_is_voided_by_a_rollback_a_growth_or_released_undo() -> None:
    lineage = generate(LAYOUT, 5, 12)
    store = ParamStore(LAYOUT, capacity_rows=4096)
    for delta in lineage.deltas[:6]:
        store.apply(delta)
    job = ScanJob(store, SHARDS, step_positions=16)
    store.rollback(VersionVector(lineage.states[3].vector))
    with pytest.raises(ScanVoided, match="rollback"):
        job.step()

    store = applied(6, seed=5)
    job = ScanJob(store, SHARDS, step_positions=16)
    for delta in lineage.deltas[6:]:
        store.apply(delta)
    store.validate(store.vector)  # frees the rows the job would walk back to
    with pytest.raises(ScanVoided, match="undo"):
        job.step()

    small = applied(2, seed=6, capacity_rows=8)
    job = ScanJob(small, SHARDS, step_positions=4)
    growths = small.tables["user"].index.growths
    for delta in generate(LAYOUT, 6, 40).deltas[2:]:
        small.apply(delta)
        if small.tables["user"].index.growths != growths:
            break
    else:
        pytest.fail("the index never grew")
    with pytest.raises(ScanVoided, match="grew"):
        job.step()
