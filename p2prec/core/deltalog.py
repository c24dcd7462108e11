"""The bounded log of applied signed deltas: the material of incremental catch-up.

A peer that lags is sent the original signed deltas (their frames, untouched), so a relay can
serve catch-up without being trusted: the receiver verifies the trainer's signature as for any
delta. ``floor[s]``: the log holds every step of shard ``s`` above this version.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2prec.wire.messages import ParamDelta

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class LoggedDelta:
    delta: ParamDelta
    raw: object  # what the driver forwards: the received frames (or the message in simulation)
    nbytes: int


def delta_key(delta: ParamDelta) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Identity of a delta: the steps it makes (two deltas never make the same step)."""
    return delta.shards, delta.versions


def delta_nbytes(delta: ParamDelta) -> int:
    rows = sum(t.keys.nbytes + t.versions.nbytes + t.rows.nbytes for t in delta.tables.values())
    return rows + sum(a.nbytes for a in delta.dense.values()) + 24 * len(delta.shards)


class DeltaLog:
    """Applied deltas in apply order, bounded in bytes, evicted oldest first."""

    def __init__(self, n_shards: int, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.nbytes = 0
        self.floor: I64 = np.zeros(n_shards, dtype=np.int64)
        self._entries: OrderedDict[tuple[tuple[int, ...], tuple[int, ...]], LoggedDelta] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, delta: ParamDelta, raw: object, nbytes: int) -> None:
        key = delta_key(delta)
        if key in self._entries:
            return
        self._entries[key] = LoggedDelta(delta, raw, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.bytes_max and self._entries:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, entry = self._entries.popitem(last=False)
        self.nbytes -= entry.nbytes
        for shard, version in zip(entry.delta.shards, entry.delta.versions, strict=True):
            self.floor[shard] = max(int(self.floor[shard]), version)

    def covers(self, shard: int, since: int) -> bool:
        return bool(self.floor[shard] <= since)

    def since(self, shards: Sequence[int], since: Sequence[int]) -> list[LoggedDelta]:
        """Entries stepping any of ``shards`` past the matching ``since`` version, in order."""
        wanted = dict(zip(shards, since, strict=True))
        return [
            e
            for e in self._entries.values()
            if any(
                s in wanted and v > wanted[s]
                for s, v in zip(e.delta.shards, e.delta.versions, strict=True)
            )
        ]

    def reset_shard(self, shard: int, version: int) -> None:
        """The shard's content was replaced at ``version``: the chain starts again there."""
        self.floor[shard] = version

    def truncate_above(self, to: I64) -> None:
        """Forget the deltas a rollback to ``to`` undid."""
        doomed = [
            key
            for key, e in self._entries.items()
            if any(v > to[s] for s, v in zip(e.delta.shards, e.delta.versions, strict=True))
        ]
        for key in doomed:
            self.nbytes -= self._entries.pop(key).nbytes
        self.floor = np.minimum(self.floor, to)
