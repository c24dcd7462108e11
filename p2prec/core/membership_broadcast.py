"""The transmit-limited broadcast queue of membership news (memberlist's TransmitLimitedQueue).

Every accepted change of a member is queued once; it rides on outgoing pings, acks, gossip (and
other layers' messages) until it has been sent ``retransmit_limit(n)`` times. A newer update
about a node replaces the queued one. The least-sent updates go first, newest first among equals,
so fresh news spreads before stale news.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from p2prec.core.membership_messages import MemberRecord


def retransmit_limit(retransmit_mult: int, n_members: int) -> int:
    """How many times an update is sent: ``retransmit_mult * ceil(log10(n + 1))``."""
    return retransmit_mult * max(1, math.ceil(math.log10(n_members + 1)))


@dataclass
class _Queued:
    record: MemberRecord
    transmits: int
    order: int  # rises with every push: higher is newer


def _least_sent_newest(queued: _Queued) -> tuple[int, int]:
    return queued.transmits, -queued.order


class BroadcastQueue:
    """At most one queued update per node id, so its length is bounded by the member table."""

    def __init__(self) -> None:
        self._items: dict[str, _Queued] = {}
        self._pushes = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, record: MemberRecord) -> None:
        """Queue ``record``, replacing any queued update about the same node."""
        self._pushes += 1
        self._items[record.node_id] = _Queued(record, 0, self._pushes)

    def discard(self, node_id: str) -> None:
        self._items.pop(node_id, None)

    def take(self, max_items: int, limit: int) -> list[MemberRecord]:
        """Up to ``max_items`` updates to piggyback; each counts as one transmission and leaves
        the queue once sent ``limit`` times."""
        if max_items <= 0 or not self._items:
            return []
        best = heapq.nsmallest(max_items, self._items.values(), key=_least_sent_newest)
        for queued in best:
            queued.transmits += 1
            if queued.transmits >= limit:
                del self._items[queued.record.node_id]
        return [q.record for q in best]

    def queued(self) -> list[tuple[MemberRecord, int]]:
        """Every queued update with how often it was sent (for checks and tests)."""
        return [(q.record, q.transmits) for q in self._items.values()]
