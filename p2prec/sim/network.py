"""A seeded simulated network on virtual time: latency, loss, duplication, reordering, cuts.

Messages are Python objects (no encoding): the simulator tests the protocol, the codec has its
own tests. Every random choice comes from one ``numpy.random.Generator``, so a seed replays the
same run exactly.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p2prec.core.effects import Route


@dataclass(frozen=True)
class LinkModel:
    """Delays in seconds and fault rates of the simulated links."""

    lan_latency_s: float = 0.0005
    wan_latency_s: float = 0.03
    jitter_s: float = 0.002  # uniform extra delay: reorders messages on one link
    loss: float = 0.0  # share of messages dropped
    duplication: float = 0.0  # share of messages delivered twice


@dataclass(order=True)
class Delivery:
    at: float
    seq: int
    src: str = field(compare=False)
    dst: str = field(compare=False)
    msg: Any = field(compare=False)
    raw: object = field(compare=False)
    route: Route = field(compare=False)


@dataclass
class Traffic:
    """Counted by the network: messages and deltas sent within and across datacenters."""

    sent: int = 0
    dropped: int = 0
    lan_deltas: int = 0
    wan_deltas: int = 0
    wan_tree_deltas: int = 0  # deltas crossing datacenters down a tree (not repair)


class SimNetwork:
    """Delivers messages between addresses, each address in a datacenter."""

    def __init__(self, rng: np.random.Generator, links: LinkModel) -> None:
        self.rng = rng
        self.links = links
        self.dc_of: dict[str, str] = {}
        self.down: set[str] = set()  # addresses that neither send nor receive (crashed)
        self.cut: set[frozenset[str]] = set()  # datacenter pairs that cannot talk
        self.traffic = Traffic()
        self._queue: list[Delivery] = []
        self._seq = itertools.count()

    def attach(self, addr: str, dc: str) -> None:
        self.dc_of[addr] = dc
        self.down.discard(addr)

    def blocked(self, src: str, dst: str) -> bool:
        if src in self.down or dst in self.down:
            return True
        a, b = self.dc_of.get(src), self.dc_of.get(dst)
        return a is None or b is None or (a != b and frozenset((a, b)) in self.cut)

    def send(
        self, now: float, src: str, dst: str, msg: Any, raw: object, route: Route, is_delta: bool
    ) -> None:
        self.traffic.sent += 1
        if self.blocked(src, dst) or self.rng.random() < self.links.loss:
            self.traffic.dropped += 1
            return
        wan = self.dc_of[src] != self.dc_of[dst]
        if is_delta:
            if wan:
                self.traffic.wan_deltas += 1
                self.traffic.wan_tree_deltas += route is Route.TREE
            else:
                self.traffic.lan_deltas += 1
        copies = 2 if self.rng.random() < self.links.duplication else 1
        for _ in range(copies):
            delay = self.links.wan_latency_s if wan else self.links.lan_latency_s
            delay += float(self.rng.random()) * self.links.jitter_s
            heapq.heappush(
                self._queue, Delivery(now + delay, next(self._seq), src, dst, msg, raw, route)
            )

    def next_time(self) -> float | None:
        return self._queue[0].at if self._queue else None

    def pop(self) -> Delivery:
        return heapq.heappop(self._queue)

    def pending(self) -> int:
        return len(self._queue)
