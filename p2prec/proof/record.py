"""The trainer's record of what it published (``p2prec.trainer.journal``), as data.

``Record`` answers the questions the checker asks of the lineage: which versions of a shard
were ever published, which of them a rollback fenced, and which validation watermarks existed
at a given time.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from p2prec.core.versions import SEQ_BITS, SEQ_MAX


def epoch_of(packed: int) -> int:
    return packed >> SEQ_BITS


@dataclass(frozen=True)
class Published:
    """One delta: the shards it stepped and the packed version each reached."""

    t_s: float
    epoch: int
    versions: dict[int, int]  # shard -> packed version
    rows: int


@dataclass(frozen=True)
class Validation:
    t_s: float
    epoch: int
    vector: tuple[int, ...]


@dataclass(frozen=True)
class RollbackEntry:
    """A rollback, with the head it left (``root``/``vector``; None when the journal ends
    before the ``head`` line)."""

    t_s: float
    new_epoch: int
    to: tuple[int, ...]
    vector: tuple[int, ...] | None = None
    root: str | None = None


@dataclass
class Record:
    deltas: list[Published] = field(default_factory=list)
    validations: list[Validation] = field(default_factory=list)
    rollbacks: list[RollbackEntry] = field(default_factory=list)
    _cache: dict[tuple[str, int], list[tuple[int, ...]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def published_versions(self) -> dict[int, set[int]]:
        """Every packed version each shard was ever published at."""
        out: dict[int, set[int]] = {}
        for delta in self.deltas:
            for shard, version in delta.versions.items():
                out.setdefault(shard, set()).add(version)
        return out

    def fenced_by(self, shard: int, version: int) -> RollbackEntry | None:
        """The first rollback that fenced ``version`` of ``shard``: one starting a newer epoch
        than the version's whose target lies below it."""
        for rollback in self.rollbacks:
            if epoch_of(version) < rollback.new_epoch and rollback.to[shard] < version:
                return rollback
        return None

    def watermark_bounds(self, until_s: float) -> tuple[int, ...] | None:
        """Per shard, the highest version any validation published by ``until_s`` named
        (None before the first): no node's watermark may exceed it by then."""
        index = bisect.bisect_right([v.t_s for v in self.validations], until_s)
        return self._prefix_max()[index - 1] if index else None

    def validated_total_bound(self, until_s: float) -> int:
        """An upper bound on the versions a validated read may see by ``until_s``: per shard
        the highest seq any validation published by then named, summed (0 when none)."""
        index = bisect.bisect_right([v.t_s for v in self.validations], until_s)
        return _total_seq(self._prefix_max_seq()[index - 1]) if index else 0

    def _prefix_max(self) -> list[tuple[int, ...]]:
        """Shard-wise maximum of the validations up to each one (in journal order)."""
        key = ("packed", len(self.validations))
        if key not in self._cache:
            self._cache[key] = _prefix_max([v.vector for v in self.validations])
        return self._cache[key]

    def _prefix_max_seq(self) -> list[tuple[int, ...]]:
        key = ("seq", len(self.validations))
        if key not in self._cache:
            seqs = [tuple(x & SEQ_MAX for x in v.vector) for v in self.validations]
            self._cache[key] = _prefix_max(seqs)
        return self._cache[key]


def _prefix_max(vectors: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    for vector in vectors:
        last = out[-1] if out else vector
        out.append(tuple(max(x, y) for x, y in zip(last, vector, strict=True)))
    return out


def _total_seq(vector: tuple[int, ...]) -> int:
    return sum(v & SEQ_MAX for v in vector)


def record_from_entries(entries: list[dict[str, Any]]) -> Record:
    """A ``Record`` from journal lines (in the order written)."""
    record = Record()
    for entry in entries:
        kind, t_s = entry["kind"], float(entry["t_s"])
        if kind == "delta":
            versions = dict(zip(entry["shards"], entry["versions"], strict=True))
            record.deltas.append(Published(t_s, entry["epoch"], versions, entry["rows"]))
        elif kind == "validated":
            record.validations.append(Validation(t_s, entry["epoch"], tuple(entry["vector"])))
        elif kind == "rollback":
            record.rollbacks.append(RollbackEntry(t_s, entry["new_epoch"], tuple(entry["to"])))
        elif kind == "head" and entry["after"] == "rollback" and record.rollbacks:
            last = record.rollbacks[-1]
            record.rollbacks[-1] = RollbackEntry(
                last.t_s, last.new_epoch, last.to, tuple(entry["vector"]), entry["root"]
            )
    return record


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The journal's lines; a torn last line (the trainer killed mid-write) is skipped."""
    entries = []
    for line in path.read_bytes().splitlines():
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return entries


def read_record(path: Path) -> Record:
    return record_from_entries(read_entries(path))
