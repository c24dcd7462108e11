"""How far a node lags the newest state its peers (the trainer among them) report.

In versions: per shard, how many steps the freshest same-epoch peer digest is ahead of this
node's vector, summed (a peer on a newer epoch counts as at least one version ahead). In
milliseconds: how long the node has been behind without interruption, sampled by the app's
ticker (``LAG_SAMPLE_INTERVAL_S``) and on every read; 0 while nothing known is missing.
``caught_up``: the node has, at least once since it started, heard the trainer's digest (the
publisher's) and held everything any peer reported; until then a joining or restarted node is
still catching up (readiness waits for it: a young lag in ms would otherwise hide a node that
lacks most of the model, and peers that started as empty as it prove nothing).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from p2prec.core.replica import Replica
from p2prec.core.sync import PeerView
from p2prec.core.versions import SEQ_MAX

# Lag in ms resolves to this (reads sample too). At 0.05 s the sampling cost an idle node
# 3.5 ms of CPU per second (measured: 14 -> 11 ms/s with sampling every 2 s), a share that 12
# nodes on one host pay together.
LAG_SAMPLE_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Lag:
    versions: int  # versions known to exist (at some peer) that this node lacks
    ms: float  # how long it has been behind without interruption
    peers_heard: int  # peers whose digest this node holds (0: lag unknown)
    caught_up: bool = True  # has held everything some peer reported, at least once


def versions_behind(replica: Replica, views: Iterable[PeerView]) -> int:
    """Summed per-shard steps by which the freshest peer digest is ahead of this node."""
    mine = replica.store.vector_view  # no copy: read here, before anything can apply
    epoch = replica.fencing.epoch
    newer_epoch = False
    best = mine.copy()
    for view in views:
        digest = view.digest
        if digest.epoch > epoch:
            newer_epoch = True
        elif digest.epoch == epoch and len(digest.vector) == mine.size:
            np.maximum(best, digest.vector.packed, out=best)
    ahead = best > mine
    steps = np.maximum((best & SEQ_MAX) - (mine & SEQ_MAX), 1)[ahead]
    behind = int(steps.sum())
    return max(behind, 1) if newer_epoch else behind


class LagTracker:
    """Turns versions behind into milliseconds behind (see module docstring)."""

    def __init__(self, clock_s: Callable[[], float] = time.monotonic) -> None:
        self.clock_s = clock_s
        self._behind_since_s: float | None = None
        self._caught_up = False

    def observe(self, replica: Replica | None) -> Lag:
        if replica is None or replica.node_id == replica.config.publisher_id:
            return Lag(0, 0.0, 0)
        views = replica.peer_views()
        behind = versions_behind(replica, views)
        now = self.clock_s()
        if behind == 0:
            self._behind_since_s = None
            publisher = replica.config.publisher_id
            heard_publisher = any(v.digest.sender == publisher for v in views)
            self._caught_up = self._caught_up or heard_publisher
        elif self._behind_since_s is None:
            self._behind_since_s = now
        since = self._behind_since_s
        lag_ms = 0.0 if since is None else (now - since) * 1000.0
        return Lag(behind, lag_ms, len(views), self._caught_up)
