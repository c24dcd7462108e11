"""The bounded log of applied signed deltas (p2prec.core.deltalog)."""

from __future__ import annotations

import numpy as np

from p2prec.core.deltalog import DeltaLog, delta_key, delta_nbytes
from p2prec.core.versions import pack
from p2prec.wire.messages import ParamDelta, TableRows

N_SHARDS = 4


def step(*steps: tuple[int, int]) -> ParamDelta:
    """A delta stepping each ``(shard, seq)`` of epoch 1 from the seq before it."""
    shards = tuple(s for s, _ in steps)
    return ParamDelta(
        shards, tuple(pack(1, q - 1) for _, q in steps), tuple(pack(1, q) for _, q in steps)
    )


def V(seq: int) -> int:  # noqa: N802  (reads like the version it builds)
    return pack(1, seq)


# Shard 0 steps 1..3, shard 1 steps 1..2, shard 2 steps 1; shard 3 is never written.
D = [step((0, 1), (1, 1)), step((0, 2)), step((1, 2), (2, 1)), step((0, 3))]


def filled(bytes_max: int = 1000, nbytes: int = 10) -> DeltaLog:
    log = DeltaLog(N_SHARDS, bytes_max)
    for delta in D:
        log.append(delta, ("raw", delta_key(delta)), nbytes)
    return log


def test_entries_keep_the_raw_frames_and_a_delta_is_logged_once() -> None:
    log = filled()
    assert len(log) == 4 and log.nbytes == 40
    assert [e.raw for e in log.since([0], [0])] == [
        ("raw", delta_key(d)) for d in (D[0], D[1], D[3])
    ]
    log.append(step((0, 2)), "again", 10)  # the same step: already held
    assert len(log) == 4 and log.nbytes == 40
    assert (log.floor == 0).all()
    assert all(log.covers(s, 0) for s in range(N_SHARDS))


def test_since_returns_the_steps_past_each_version_in_apply_order() -> None:
    log = filled()
    assert [e.delta for e in log.since([0], [V(1)])] == [D[1], D[3]]
    assert [e.delta for e in log.since([1], [V(1)])] == [D[2]]
    assert [e.delta for e in log.since([0, 2], [V(2), 0])] == [D[2], D[3]]
    assert [e.delta for e in log.since([1, 2], [V(2), V(1)])] == []
    assert log.since([3], [0]) == []
    assert log.since([], []) == []


def test_bytes_are_bounded_and_eviction_raises_the_floors() -> None:
    log = filled(bytes_max=25)  # room for two entries of 10 bytes
    assert len(log) == 2 and log.nbytes == 20
    assert [e.delta for e in log.since([0, 1, 2], [0, 0, 0])] == [D[2], D[3]]
    # D[0] and D[1] were evicted: shard 0 is covered from 1.2, shard 1 from 1.1.
    assert log.floor.tolist() == [V(2), V(1), 0, 0]
    assert log.covers(0, V(2)) and not log.covers(0, V(1))
    assert log.covers(1, V(1)) and not log.covers(1, 0)
    assert log.covers(2, 0) and log.covers(3, 0)


def test_an_entry_larger_than_the_bound_is_not_kept() -> None:
    log = DeltaLog(N_SHARDS, bytes_max=5)
    log.append(D[0], None, 10)
    assert len(log) == 0 and log.nbytes == 0
    assert log.floor.tolist() == [V(1), V(1), 0, 0]


def test_truncate_above_forgets_undone_steps_and_lowers_the_floors() -> None:
    log = filled(bytes_max=35, nbytes=10)  # D[0] evicted: floors 1.1 on shards 0 and 1
    assert log.floor.tolist() == [V(1), V(1), 0, 0]
    to = np.array([V(1), V(2), 0, 0], dtype=np.int64)
    log.truncate_above(to)
    # D[1] and D[3] step shard 0 past 1.1; D[2] steps shard 2 past 0.
    assert len(log) == 0 and log.nbytes == 0
    assert log.floor.tolist() == [V(1), V(1), 0, 0]

    log = filled()
    log.truncate_above(np.array([V(2), V(2), V(1), 0], dtype=np.int64))
    assert [e.delta for e in log.since([0, 1, 2], [0, 0, 0])] == [D[0], D[1], D[2]]
    assert log.nbytes == 30

    log = filled(bytes_max=25)  # floors [1.2, 1.1, 0, 0]
    log.truncate_above(np.array([V(1), V(2), V(1), 0], dtype=np.int64))
    assert [e.delta for e in log.since([0, 1, 2], [0, 0, 0])] == [D[2]]
    assert log.floor.tolist() == [V(1), V(1), 0, 0]  # nothing above ``to`` is claimed


def test_reset_shard_restarts_the_chain_at_a_version() -> None:
    log = filled(bytes_max=25)
    log.reset_shard(0, V(3))
    assert log.covers(0, V(3)) and not log.covers(0, V(2))
    log.reset_shard(1, 0)
    assert log.covers(1, 0)


def test_delta_nbytes_counts_rows_dense_and_a_per_shard_header() -> None:
    keys = np.arange(5, dtype=np.int64)
    rows = TableRows(keys, np.full(5, V(1), dtype=np.int64), np.zeros((5, 4), np.float32))
    dense = {"w": np.zeros((2, 3), np.float32)}
    delta = ParamDelta((0, 3), (0, 0), (V(1), V(1)), {"user": rows}, dense)
    assert delta_nbytes(delta) == 5 * 8 + 5 * 8 + 5 * 4 * 4 + 2 * 3 * 4 + 24 * 2
    assert delta_key(delta) == ((0, 3), (V(1), V(1)))
    assert delta_key(delta) != delta_key(step((0, 2), (3, 1)))
