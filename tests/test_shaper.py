"""The WAN uplink's FIFO (p2prec.io.shaper) on an explicit clock: no sockets, no sleeping."""

from __future__ import annotations

import numpy as np
import pytest

from p2prec.io.shaper import MBIT, Uplink


def test_a_backlog_leaves_at_exactly_the_rate() -> None:
    up: Uplink[int] = Uplink(1000.0)  # bytes/s
    for i in range(10):
        up.push(i, "b", 100, now=0.0)
    assert up.pop_due(0.05) == []  # the first message's 100 B take 0.1 s
    assert up.next_release() == pytest.approx(0.1)
    assert up.pop_due(0.25) == [0, 1]
    assert up.bytes_released == 200
    assert up.pop_due(1.0) == list(range(2, 10))
    assert up.bytes_released == 1000  # = rate x 1 s of backlog
    assert up.queued() == 0 and up.next_release() is None


def test_bytes_released_track_rate_times_time_for_random_sizes() -> None:
    rng = np.random.default_rng(3)
    rate = 125_000.0  # 1 Mbit/s
    up: Uplink[int] = Uplink(rate)
    sizes = [int(s) for s in rng.integers(1, 20_000, 300)]
    for i, size in enumerate(sizes):
        up.push(i, f"peer{i % 7}", size, now=0.0)
    released: list[int] = []
    for t in np.linspace(0.0, sum(sizes) / rate, 97):
        released += up.pop_due(float(t))
        # while backlogged, what left is rate x t, less at most the message in serialisation
        assert rate * t - max(sizes) <= up.bytes_released <= rate * t + 1e-6
    released += up.pop_due(sum(sizes) / rate + 1e-9)
    assert released == list(range(300))  # FIFO across destinations
    assert up.bytes_released == sum(sizes)


def test_departure_is_computed_from_the_previous_one_not_from_late_polls() -> None:
    up: Uplink[str] = Uplink(100.0)
    up.push("a", "x", 100, now=0.0)  # leaves at 1.0
    up.push("b", "y", 100, now=0.5)  # waits for a: leaves at 2.0
    assert up.pop_due(7.0) == ["a", "b"]  # a late timer releases both, no drift
    up.push("c", "x", 50, now=2.2)  # the link was idle since 2.0: no saved-up credit
    assert up.next_release() == pytest.approx(2.7)
    up.push("d", "x", 50, now=2.3)
    assert up.pop_due(2.7) == ["c"]
    assert up.next_release() == pytest.approx(3.2)


def test_per_destination_counts_discard_and_rate_change() -> None:
    up: Uplink[str] = Uplink(1000.0)
    up.push("big", "a", 500, now=0.0)
    up.push("small", "b", 100, now=0.0)
    up.push("big2", "a", 500, now=0.0)
    assert (up.queued("a"), up.queued("b"), up.queued()) == (2, 1, 3)
    assert up.backlog_bytes() == 1100
    assert up.next_release() == pytest.approx(0.5)
    assert up.discard(lambda key: key != "a") == 2  # "a" forgotten: its link time given back
    assert up.next_release() == pytest.approx(0.1)
    up.set_rate(500.0)
    assert up.next_release() == pytest.approx(0.2)
    assert up.pop_due(0.2) == ["small"]
    assert up.queued("a") == 0 and up.queued() == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rate"):
        Uplink[int](0.0)
    up: Uplink[int] = Uplink(MBIT)
    assert up.rate_bytes_s == 125_000.0
    with pytest.raises(ValueError, match="size"):
        up.push(1, "a", -1, now=0.0)
