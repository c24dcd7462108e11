"""A table's next rows array is prepared off the loop, and growth uses it."""

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2prec.model import spare
from p2prec.model.keyindex import EMPTY, KeyIndex
from p2prec.model.spare import SpareArray, huge_page_array
from p2prec.model.table import EmbeddingTable

DIM = 64
CAPACITY = 4096  # 1 MiB of float32 rows of dim 64: the smallest table given a spare
WAIT_S = 30.0


def fill(table: EmbeddingTable, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = rng.choice(10**9, count, replace=False).astype(np.int64)
    rows = rng.standard_normal((count, DIM)).astype(np.float32)
    positions = table.positions(keys)
    shards = table.shard_of(keys)
    table.write(positions, keys, np.ones(count, dtype=np.int64), rows, shards)
    return keys, rows


def test_growth_past_nine_tenths_uses_the_array_prepared_ahead() -> None:
    table = EmbeddingTable("item", DIM, np.dtype(np.float32), 16, CAPACITY)
    keys, rows = fill(table, int(CAPACITY * 0.95), seed=1)
    prepared = table._spare
    assert prepared is not None and prepared.capacity == 2 * CAPACITY
    assert prepared.wait(WAIT_S)
    ready = prepared._array
    more_keys, more_rows = fill(table, CAPACITY, seed=2)  # past the capacity: it grows
    assert table.capacity == 2 * CAPACITY and table.rows is ready
    for k, r in ((keys, rows), (more_keys, more_rows)):
        slots = table.current_slots(k)
        assert (table.rows[slots] == r).all()


def test_growth_before_the_spare_is_ready_allocates_as_before(monkeypatch: Any) -> None:
    release = threading.Event()
    prepare = SpareArray._prepare

    def slow(self: SpareArray, dtype: np.dtype[Any], fill: int | None) -> None:
        release.wait(WAIT_S)
        prepare(self, dtype, fill)

    monkeypatch.setattr(SpareArray, "_prepare", slow)
    table = EmbeddingTable("item", DIM, np.dtype(np.float32), 16, CAPACITY)
    keys, rows = fill(table, int(CAPACITY * 0.95), seed=3)
    assert table._spare is not None and table._spare.take() is None  # not ready yet
    more_keys, more_rows = fill(table, CAPACITY, seed=4)
    release.set()
    assert table.capacity == 2 * CAPACITY
    for k, r in ((keys, rows), (more_keys, more_rows)):
        assert (table.rows[table.current_slots(k)] == r).all()


def test_small_arrays_skip_the_mapping() -> None:
    small = huge_page_array((16, DIM), np.dtype(np.float32))
    large = huge_page_array((2 * CAPACITY, DIM), np.dtype(np.float32))
    assert small.nbytes < spare.SPARE_MIN_BYTES <= large.nbytes
    assert small.flags.writeable and large.flags.writeable
    large[-1] = 1.5
    assert large[-1, 0] == 1.5


def _mapping_flags(array: np.ndarray) -> str:
    """The permission flags of the mapping holding ``array`` (``/proc/self/maps``)."""
    address = array.__array_interface__["data"][0]
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, flags = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end:
            return flags
    raise AssertionError("no mapping holds the array")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_large_arrays_live_in_private_memory_that_can_take_huge_pages() -> None:
    large = huge_page_array((2 * CAPACITY, DIM), np.dtype(np.float32))
    assert _mapping_flags(large).endswith("p")  # shared (tmpfs) memory gets no huge pages


def test_the_key_index_grows_into_a_map_prepared_ahead() -> None:
    index = KeyIndex(1 << 16)  # 2 MiB of (key, value) pairs: given a spare
    capacity = index.capacity
    rng = np.random.default_rng(5)
    keys = rng.choice(10**12, capacity, replace=False).astype(np.int64)
    first = keys[: int(capacity * 0.47)]  # past 9/10 of the way to half full
    index.set_values(index.find_or_insert(first), first * 3)
    prepared = index._spare
    assert prepared is not None and prepared.capacity == 2 * capacity
    assert prepared.wait(WAIT_S)
    ready = prepared._array
    assert ready is not None and (ready == EMPTY).all()
    rest = keys[int(capacity * 0.47) :]
    index.set_values(index.find_or_insert(rest), rest * 3)  # past half full: it grows
    assert index.capacity == 2 * capacity and np.shares_memory(index._keys, ready)
    assert (index.lookup(keys) == keys * 3).all() and len(index) == keys.size
