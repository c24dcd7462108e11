"""The trainer's side of the protocol: publish deltas and control messages into the mesh.

The publisher is a member of the mesh (it gossips, and serves catch-up as the last resort) but
never part of a tree: it sends each delta to the root of its group's tree in every datacenter,
so exactly one copy crosses into each datacenter. Its store is the head of the lineage.
"""

from __future__ import annotations

from p2prec.core.deltalog import delta_nbytes
from p2prec.core.effects import Effect, Note, Route, Send
from p2prec.core.fencing import Signed, Verdict
from p2prec.core.replica import Replica
from p2prec.core.tree import group_of_shard
from p2prec.model.scan import ScanJob, ScanVoided, ShardScan
from p2prec.model.snapshot import scanned_strong_digests, strong_digests
from p2prec.wire.messages import ParamDelta, Rollback, Validated


class StaleHead(Exception):
    """A ``HeadDigestJob`` whose head was rolled back, replaced or released meanwhile."""


class StrongDigests:
    """BLAKE3 of every shard's canonical snapshot, remembered with the (version, digest) it
    was computed for: only shards whose (version, digest) changed are hashed again (hashing a
    shard reads all its rows)."""

    def __init__(self) -> None:
        self.known: dict[int, tuple[int, int, bytes]] = {}


class HeadDigestJob:
    """The ``Validated`` of the head as it was when the job began, its strong digests computed
    a few shards per ``step``: the publisher's loop goes on publishing in between (a whole
    store hashed at once stalled it ~170 ms at 500k rows). Reads the rows through one index
    scan taken at the start; a step raises ``StaleHead`` when a rollback, a restored shard or a
    released undo has freed rows the scan points at.

    A step is ``build`` then ``confirm``. ``build`` (a step of the scan, or the digests of a
    few shards) may run in a worker thread while the loop publishes: it reads the index and
    the slots the scan found, which a write never changes (new rows go to fresh slots) and
    which are freed only by a rollback, a restored shard or undo released past the scan's
    versions. ``confirm``, on the loop, finds out (undo floors and rewrites only rise: readable
    then means readable throughout) and keeps the digests, or raises ``StaleHead``."""

    def __init__(self, publisher: Publisher, cache: StrongDigests, created_ms: int) -> None:
        store = publisher.store
        self.publisher, self.cache, self.created_ms = publisher, cache, created_ms
        self.epoch = publisher.fencing.epoch
        self.vector = store.vector
        digests = store.digests
        self.state = {
            s: (int(self.vector.packed[s]), int(digests[s])) for s in range(store.layout.n_shards)
        }
        stale = [s for s, now in self.state.items() if cache.known.get(s, (0, 0))[:2] != now]
        dense = store.layout.dense_shard
        self.done = {s: cache.known[s][2] for s in self.state if s not in stale}
        if dense in stale:
            self.done.update(strong_digests(store, [dense]))
        self.pending = [s for s in stale if s != dense]
        self.scan: ShardScan | None = None
        self.scan_job = ScanJob(store, self.pending, self.vector.packed) if self.pending else None

    def step(self, max_shards: int) -> Validated | None:
        """Take a step of the index scan, or hash up to ``max_shards`` more shards; the
        ``Validated`` once every shard is done."""
        return self.confirm(self.build(max_shards))

    def build(self, max_shards: int) -> dict[int, bytes] | None:
        """A step of the index scan (None), or the digests of up to ``max_shards`` more
        shards, not yet kept (see the class docstring: safe in a worker thread)."""
        if self.scan_job is not None and self.scan is None:
            self.scan = self.scan_job.step_off_loop()
            return None
        chunk = self.pending[:max_shards]
        if not chunk:
            return {}
        assert self.scan is not None
        return dict(scanned_strong_digests(self.publisher.store, self.scan, chunk))

    def confirm(self, built: dict[int, bytes] | None) -> Validated | None:
        """On the loop, after ``build``: keep its digests if their rows were still in their
        slots, else raise ``StaleHead``; the ``Validated`` once every shard is done."""
        store = self.publisher.store
        if built is None:  # a step of the scan
            assert self.scan_job is not None
            try:
                self.scan_job.confirm_step()
            except ScanVoided as exc:
                raise StaleHead(f"the head moved under the scan: {exc}") from exc
            return None
        if built:
            assert self.scan is not None
            if self.publisher.fencing.epoch != self.epoch or not all(
                self.scan.readable(store, s) for s in built
            ):
                raise StaleHead(f"the head moved under the digests of shards {sorted(built)}")
            self.done.update(built)
            self.pending = [s for s in self.pending if s not in built]
        if self.pending:
            return None
        for shard, strong in self.done.items():
            self.cache.known[shard] = (*self.state[shard], strong)
        joined = b"".join(self.done[s] for s in range(store.layout.n_shards))
        return Validated(self.vector, self.epoch, self.created_ms, joined)


class Publisher(Replica):
    """A replica that originates deltas, validations and rollbacks (see module docstring)."""

    _strong_digests: StrongDigests | None = None

    @property
    def _strong(self) -> StrongDigests:
        if self._strong_digests is None:
            self._strong_digests = StrongDigests()
        return self._strong_digests

    def publish(self, delta: ParamDelta, raw: object = None) -> list[Effect]:
        """Apply ``delta`` to the head and send one copy to each datacenter's tree root."""
        result = self.store.apply(delta)
        if result.gaps or len(result.applied) != len(delta.shards):
            raise ValueError(f"delta does not continue the head: {result}")
        raw = delta if raw is None else raw
        self.log.append(delta, raw, delta_nbytes(delta))
        self.counters.applied += 1
        group = group_of_shard(delta.shards[0], self.config.shard_groups) if delta.shards else 0
        return self._to_roots(group, delta, raw)

    def publish_validated(self, msg: Validated, raw: object = None) -> list[Effect]:
        signed = Signed(msg, msg if raw is None else raw)
        if not self.fencing.accept_validated(signed):
            raise ValueError("validated message is stale or of another epoch")
        self.store.validate(msg.vector, self.config.release_step_records)  # rest: tick
        return self._to_roots(0, msg, signed.raw)

    def validated_head(self, created_ms: int = 0) -> Validated:
        """A ``Validated`` for the head, with the BLAKE3 of every shard's canonical snapshot
        (what lets nodes verify snapshots served by untrusted peers), at once."""
        job = self.begin_validated_head(created_ms)
        while (validated := job.step(self.store.layout.n_shards)) is None:
            pass
        return validated

    def begin_validated_head(self, created_ms: int = 0) -> HeadDigestJob:
        """``validated_head`` in steps (see ``HeadDigestJob``): one job at a time."""
        return HeadDigestJob(self, self._strong, created_ms)

    def publish_rollback(self, msg: Rollback, raw: object = None) -> list[Effect]:
        """Roll the head back and announce it. Follow it with
        ``publish_validated(validated_head())``: nodes that missed the old epoch's validation
        need one of the new epoch to verify the snapshots they may have to fetch."""
        signed = Signed(msg, msg if raw is None else raw)
        if self.fencing.accept_rollback(signed) is not Verdict.ADMIT:
            raise ValueError(f"rollback must start epoch {self.fencing.epoch + 1}")
        self.store.rollback(msg.to)
        self.log.truncate_above(msg.to.packed)
        self.counters.rollbacks += 1
        return [Note("rolled_back", {"epoch": msg.new_epoch}), *self._to_roots(0, msg, signed.raw)]

    def _to_roots(self, group: int, msg: object, raw: object) -> list[Effect]:
        sends: list[Effect] = []
        for root in self.tree.roots(group).values():
            addr = self._addr_of(root)
            if addr is not None:
                sends.append(Send(addr, msg, raw, Route.TREE))
        return sends
