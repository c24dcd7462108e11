"""A WAN uplink: one FIFO that releases bytes at a fixed rate (pure: the clock is an argument).

A host's sends to other datacenters share one uplink of ``rate_bytes_s``. Each message occupies
the link for ``size / rate`` seconds (its serialisation delay) and leaves when its last byte is
out: the message that reaches the head of the queue at ``t`` (arrival, or the moment the one
before it left, whichever is later) leaves at ``t + size / rate``. Queued messages wait in
arrival order; while the link is busy it releases exactly ``rate`` bytes per second (at message
granularity), and timers that fire late do not slow it down, since departures are computed
from the previous departure, not from when the caller got round to asking.

Departure times are computed lazily, when a message becomes the head, so that ``discard`` (a
peer forgotten) and ``set_rate`` (a chaos throttle changed) apply to everything still queued.
The queue is bounded per destination by the caller (``queued``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

MBIT = 1e6 / 8  # bytes per second in one Mbit/s


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    item: T
    key: str  # destination, for per-destination bounds and discard
    size: int
    arrival: float


class Uplink(Generic[T]):
    """FIFO serialisation at ``rate_bytes_s``; see the module docstring."""

    def __init__(self, rate_bytes_s: float) -> None:
        self._rate = 0.0
        self.set_rate(rate_bytes_s)
        self._queue: collections.deque[_Entry[T]] = collections.deque()
        self._per_key: collections.Counter[str] = collections.Counter()
        self._free_at = float("-inf")  # when the link finished the last released message
        self._head_at: float | None = None  # departure of the head, once computed
        self.bytes_released = 0
        self.released = 0

    @property
    def rate_bytes_s(self) -> float:
        return self._rate

    def set_rate(self, rate_bytes_s: float) -> None:
        """A new rate, for the head (recomputed) and everything after it."""
        if not rate_bytes_s > 0:
            raise ValueError(f"rate_bytes_s must be > 0, got {rate_bytes_s}")
        self._rate = float(rate_bytes_s)
        self._head_at = None

    def push(self, item: T, key: str, size: int, now: float) -> None:
        """Queue ``item`` (``size`` bytes, for destination ``key``) at time ``now``."""
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self._queue.append(_Entry(item, key, size, now))
        self._per_key[key] += 1

    def queued(self, key: str | None = None) -> int:
        """Messages waiting (for ``key``, or in all)."""
        return len(self._queue) if key is None else self._per_key[key]

    def backlog_bytes(self) -> int:
        return sum(e.size for e in self._queue)

    def next_release(self) -> float | None:
        """When the head leaves; None when the queue is empty."""
        if not self._queue:
            return None
        if self._head_at is None:
            head = self._queue[0]
            self._head_at = max(head.arrival, self._free_at) + head.size / self._rate
        return self._head_at

    def pop_due(self, now: float) -> list[T]:
        """Every message whose departure is at or before ``now``, in FIFO order."""
        out: list[T] = []
        while (at := self.next_release()) is not None and at <= now:
            entry = self._queue.popleft()
            self._forget_one(entry.key)
            self._free_at, self._head_at = at, None
            self.bytes_released += entry.size
            self.released += 1
            out.append(entry.item)
        return out

    def discard(self, keep: Callable[[str], bool]) -> int:
        """Drop the queued messages whose destination ``keep`` rejects; how many. The link
        time of a dropped head is given back (its departure is computed again)."""
        before = len(self._queue)
        kept = [e for e in self._queue if keep(e.key)]
        if len(kept) == before:
            return 0
        self._queue = collections.deque(kept)
        self._per_key = collections.Counter(e.key for e in kept)
        self._head_at = None
        return before - len(kept)

    def clear(self) -> None:
        self._queue.clear()
        self._per_key.clear()
        self._head_at = None

    def _forget_one(self, key: str) -> None:
        self._per_key[key] -= 1
        if self._per_key[key] <= 0:
            del self._per_key[key]
