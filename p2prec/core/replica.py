"""One node of the mesh as a pure state machine: events in, effects out (DESIGN.md section 3).

It composes membership (who is alive, where), the dissemination trees, the parameter store,
the log of signed deltas, fencing, and anti-entropy. Drivers call ``handle`` with each incoming
message and ``tick`` at ``next_deadline()``; they carry out the returned ``Send`` effects.
The same object runs in a real process (p2prec/io) and in the simulator (p2prec/sim).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from p2prec.core.deltalog import DeltaLog, delta_key, delta_nbytes
from p2prec.core.effects import Effect, Incoming, Note, Persist, Route, Send
from p2prec.core.fencing import Fencing, Signed, Verdict
from p2prec.core.sync import (
    PeerView,
    behind_shards,
    digest_of,
    diverged_shards,
    pick_source,
    request_for,
    serve,
)
from p2prec.core.tree import TreeMember, TreeView, group_of_shard
from p2prec.model.snapshot import SnapshotError, restore_shard, strong_digest
from p2prec.model.store import InvalidDelta, ParamStore
from p2prec.wire.messages import (
    ControlRequest,
    ParamDelta,
    Rollback,
    ShardSnapshot,
    SyncDigest,
    SyncRequest,
    Validated,
)


class MemberLike(Protocol):
    node_id: str
    addr: str
    dc: str


class MembershipLike(Protocol):
    """What the replica needs of the membership layer (core/membership.py)."""

    def tick(self, now: float) -> list[Any]: ...
    def receive(self, msg: Any, from_addr: str, now: float) -> list[Any]: ...
    def next_deadline(self) -> float | None: ...
    def alive_members(self) -> list[Any]: ...
    def drain_changes(self) -> list[Any]: ...
    def handles(self, msg: Any) -> bool: ...


# Share of anti-entropy rounds a node that has not yet heard the trainer spends asking it.
TRAINER_FIRST_SHARE = 0.75


@dataclass(frozen=True)
class ReplicaConfig:
    """Tuning of the replication protocol (the io layer builds it from config.MeshConfig)."""

    fanout: int = 4  # children per node in a datacenter's tree
    shard_groups: int = 4  # one tree per group of shards, to spread relay work
    publisher_id: str = "trainer"  # the trainer's member id: never part of a tree
    anti_entropy_interval_s: float = 1.0  # how often a digest goes to one random peer
    wan_sync_share: float = 0.1  # share of digests sent to another datacenter
    repair_grace_s: float = 0.5  # a shard behind for this long is pulled (not in flight)
    request_timeout_s: float = 2.0  # a pull unanswered for this long may be sent again
    gap_buffer_max: int = 256  # deltas held while an earlier one is missing
    delta_log_bytes_max: int = 256 << 20  # signed deltas kept to serve catch-up
    repair_deltas_max: int = 512  # deltas in one catch-up answer
    seen_max: int = 8192  # tree messages remembered, so each is relayed once
    release_step_records: int = 1024  # validated shard steps freed per slice (~0.3 us each)
    # Time between two slices of a validation's undo release. Back to back, every node of a
    # host freed its undo in the same ~10 ms, right when the Validated reached them all.
    release_interval_s: float = 0.02


@dataclass
class Counters:
    applied: int = 0  # deltas applied from the tree
    repaired: int = 0  # deltas and snapshots applied by catch-up
    rejected: int = 0  # deltas refused as invalid (or snapshots failing verification, digests
    # of another shard count)
    fenced: int = 0  # deltas of a fenced epoch refused
    duplicates: int = 0  # deltas already held
    gap_dropped: int = 0  # buffered deltas dropped at the bound (repaired later)
    rollbacks: int = 0
    pulls: int = 0  # catch-up requests sent


class Replica:
    """A node of the mesh (see module docstring)."""

    def __init__(
        self,
        node_id: str,
        addr: str,
        dc: str,
        store: ParamStore,
        membership: MembershipLike,
        config: ReplicaConfig,
        rng: np.random.Generator,
    ) -> None:
        self.node_id, self.addr, self.dc = node_id, addr, dc
        self.store = store
        self.membership = membership
        self.config = config
        self.rng = rng
        self.fencing = Fencing()
        self.log = DeltaLog(store.layout.n_shards, config.delta_log_bytes_max)
        self.counters = Counters()
        self._tree: TreeView | None = None
        self._members: dict[str, MemberLike] = {}
        self._seen: OrderedDict[object, None] = OrderedDict()
        self._gap: OrderedDict[object, tuple[ParamDelta, object]] = OrderedDict()
        self._views: dict[str, PeerView] = {}
        self._behind: dict[int, float] = {}  # shard -> when first seen behind a peer
        self._asked: dict[int, float] = {}  # shard -> when last pulled
        self._control_asked: dict[str, float] = {}  # peer -> when last asked for control
        self._next_sync = 0.0
        self._next_release = 0.0  # when the next slice of validated undo is freed
        self._refresh_members()

    # -- driver interface ----------------------------------------------------------------------

    def peer_views(self) -> list[PeerView]:
        """The newest anti-entropy digest heard from each live peer (for lag figures)."""
        return list(self._views.values())

    def handle(self, event: Incoming, now: float) -> list[Effect]:
        msg = event.msg
        if isinstance(msg, ParamDelta):
            return self._on_delta(msg, event.raw, event.route, event.addr, now)
        if isinstance(msg, Validated | Rollback):
            return self._on_control(Signed(msg, event.raw), event.route, event.addr, now)
        if isinstance(msg, SyncDigest):
            return self._on_digest(msg, event.addr, now)
        if isinstance(msg, SyncRequest):
            return self._on_request(msg, event.addr)
        if isinstance(msg, ShardSnapshot):
            return self._on_snapshot(msg, event.raw)
        if isinstance(msg, ControlRequest):
            return self._send_control(event.addr)
        if self.membership.handles(msg):
            return self._membership_effects(self.membership.receive(msg, event.addr, now))
        return [Note("unknown_message", {"type": type(msg).__name__, "addr": event.addr})]

    def tick(self, now: float) -> list[Effect]:
        effects = self._membership_effects(self.membership.tick(now))
        if now >= self._next_sync:
            self._next_sync = now + self.config.anti_entropy_interval_s
            effects += self._gossip_digest()
        effects += self._pull_due(now)
        if self.store.release_pending and now >= self._next_release:
            self.store.release_validated(self.config.release_step_records)  # a slice
            self._next_release = now + self.config.release_interval_s
        return effects

    def next_deadline(self) -> float | None:
        times = [self._next_sync]
        if self.store.release_pending:
            times.append(self._next_release)
        times += [self._pull_time(shard, since) for shard, since in self._behind.items()]
        membership = self.membership.next_deadline()
        if membership is not None:
            times.append(membership)
        return min(times)

    # -- membership and trees ------------------------------------------------------------------

    def _membership_effects(self, sends: list[Any]) -> list[Effect]:
        if self.membership.drain_changes():
            self._refresh_members()
        return [Send(s.addr, s.msg, route=Route.MESH) for s in sends]

    def _refresh_members(self) -> None:
        alive = [m for m in self.membership.alive_members() if m.node_id != self.node_id]
        self._members = {m.node_id: m for m in alive}
        nodes = [
            TreeMember(m.node_id, m.dc) for m in alive if m.node_id != self.config.publisher_id
        ]
        if self.node_id != self.config.publisher_id:
            nodes.append(TreeMember(self.node_id, self.dc))
        self._tree = TreeView(nodes, self.config.fanout, self.config.shard_groups)
        for gone in set(self._views) - set(self._members):
            del self._views[gone]

    @property
    def tree(self) -> TreeView:
        assert self._tree is not None
        return self._tree

    def _addr_of(self, node_id: str) -> str | None:
        member = self._members.get(node_id)
        return member.addr if member is not None else None

    def _relay(self, key: object, group: int, msg: Any, raw: object) -> list[Effect]:
        """Send a tree message on to this node's children, the first time it is seen."""
        if key in self._seen:
            return []
        self._seen[key] = None
        while len(self._seen) > self.config.seen_max:
            self._seen.popitem(last=False)
        addrs = [self._addr_of(c) for c in self.tree.children(self.node_id, group)]
        return [Send(a, msg, raw, Route.TREE) for a in addrs if a is not None]

    # -- deltas --------------------------------------------------------------------------------

    def _on_delta(
        self, delta: ParamDelta, raw: object, route: Route, addr: str, now: float
    ) -> list[Effect]:
        verdict = self.fencing.judge(delta)
        if verdict is Verdict.FENCED:
            self.counters.fenced += 1
            return [Note("delta_fenced", {"shards": len(delta.shards)})]
        effects = self._relay_delta(delta, raw) if route is Route.TREE else []
        if verdict is Verdict.FUTURE:
            self._hold(delta, raw)
            return [*effects, *self._ask_control(addr, now)]
        return effects + self._apply(delta, raw, repaired=route is Route.REPAIR)

    def forward(self, event: Incoming) -> list[Effect]:
        """The sends that pass a tree delta on to this node's children, ahead of ``handle``:
        a relay forwards a delta (its signature already checked by the driver) before applying
        it, so a hop costs the receive and the check, not the apply. ``handle`` then does not
        send it again. Anything else: no effects."""
        msg = event.msg
        if event.route is not Route.TREE or not isinstance(msg, ParamDelta):
            return []
        if self.fencing.judge(msg) is Verdict.FENCED:
            return []
        return self._relay_delta(msg, event.raw)

    def _relay_delta(self, delta: ParamDelta, raw: object) -> list[Effect]:
        if not delta.shards:
            return []
        group = group_of_shard(delta.shards[0], self.config.shard_groups)
        return self._relay(delta_key(delta), group, delta, raw)

    def _apply(self, delta: ParamDelta, raw: object, repaired: bool) -> list[Effect]:
        effects, progressed = self._apply_one(delta, raw, repaired)
        while progressed and self._gap:  # an applied delta may close the gap of held ones
            progressed = False
            for key, (h_delta, h_raw) in list(self._gap.items()):
                readiness = self._readiness(h_delta)
                if readiness == "gap":
                    continue
                del self._gap[key]
                if readiness == "ready":
                    more, applied = self._apply_one(h_delta, h_raw, repaired=True)
                    effects += more
                    progressed = progressed or applied
        return effects

    def _readiness(self, delta: ParamDelta) -> str:
        """ "ready" when a shard of ``delta`` can step now, "held" when every shard has it
        already, "gap" when it still waits for an earlier step."""
        vector = self.store.vector_view
        waiting = False
        for shard, base, version in zip(delta.shards, delta.bases, delta.versions, strict=True):
            current = int(vector[shard]) if 0 <= shard < vector.size else 0
            if base <= current < version:
                return "ready"
            waiting = waiting or current < base
        return "gap" if waiting else "held"

    def _apply_one(
        self, delta: ParamDelta, raw: object, repaired: bool
    ) -> tuple[list[Effect], bool]:
        verdict = self.fencing.judge(delta)
        if verdict is not Verdict.ADMIT:
            if verdict is Verdict.FUTURE:
                self._hold(delta, raw)
            return [], False
        try:
            result = self.store.apply(delta)
        except InvalidDelta as exc:
            self.counters.rejected += 1
            return [Note("delta_rejected", {"reason": str(exc)})], False
        if result.gaps:
            self._hold(delta, raw)
        if not result.applied:
            self.counters.duplicates += 0 if result.gaps else 1
            return [], False
        self.log.append(delta, raw, delta_nbytes(delta))
        if repaired:
            self.counters.repaired += 1
        else:
            self.counters.applied += 1
        for shard in result.applied:
            self._behind.pop(shard, None)
        fields = {"created_ms": delta.created_ms, "repaired": repaired, "rows": result.rows_written}
        return [Persist(raw), Note("delta_applied", fields)], True

    def _hold(self, delta: ParamDelta, raw: object) -> None:
        key = delta_key(delta)
        if key in self._gap:
            return
        self._gap[key] = (delta, raw)
        if len(self._gap) > self.config.gap_buffer_max:
            self._gap.popitem(last=False)
            self.counters.gap_dropped += 1

    def _retry_held(self) -> list[Effect]:
        """Try the held deltas again (after a rollback or a restored snapshot)."""
        held, self._gap = list(self._gap.values()), OrderedDict()
        effects: list[Effect] = []
        for delta, raw in held:
            effects += self._apply(delta, raw, repaired=True)
        return effects

    # -- control: validation and rollback ------------------------------------------------------

    def _on_control(self, signed: Signed, route: Route, addr: str, now: float) -> list[Effect]:
        msg = signed.msg
        effects: list[Effect] = []
        if route is Route.TREE:
            vector = msg.vector if isinstance(msg, Validated) else msg.to
            key = (type(msg).__name__, _control_epoch(msg), vector)
            effects += self._relay(key, 0, msg, signed.raw)
        if isinstance(msg, Rollback):
            return effects + self._on_rollback(signed, addr, now)
        assert isinstance(msg, Validated)
        if msg.epoch > self.fencing.epoch:
            return [*effects, *self._ask_control(addr, now)]
        if len(msg.vector) == self.store.layout.n_shards and self.fencing.accept_validated(signed):
            self.store.validate(msg.vector, self.config.release_step_records)  # rest: tick
            self._next_release = now + self.config.release_interval_s
            effects.append(Persist(signed.raw))
            effects.append(Note("validated", {"epoch": msg.epoch, "v": msg.vector.summary()}))
        return effects

    def _on_rollback(self, signed: Signed, addr: str, now: float) -> list[Effect]:
        msg = signed.msg
        assert isinstance(msg, Rollback)
        if len(msg.to) != self.store.layout.n_shards:
            self.counters.rejected += 1
            return [Note("rollback_rejected", {"reason": "vector length"})]
        verdict = self.fencing.accept_rollback(signed)
        if verdict is Verdict.FUTURE:
            return self._ask_control(addr, now)
        if verdict is Verdict.FENCED:
            return []
        lost = self._roll_back(msg)
        self.counters.rollbacks += 1
        note = Note(
            "rolled_back",
            {"epoch": msg.new_epoch, "to": msg.to.summary(), "shards_refetched": lost},
        )
        return [Persist(signed.raw), note, *self._retry_held()]

    def _roll_back(self, msg: Rollback) -> list[int]:
        """Undo everything above ``msg.to``; shards whose undo information does not reach back
        are emptied (to be fetched again) rather than left holding fenced rows."""
        lost = self.store.can_roll_back(msg.to)
        for shard in lost:
            self.store.replace_shard(shard, 0, {}, {})
            self.log.reset_shard(shard, 0)
        self.store.rollback(msg.to)
        self.log.truncate_above(msg.to.packed)
        for key, (delta, _) in list(self._gap.items()):
            if self.fencing.judge(delta) is Verdict.FENCED:
                del self._gap[key]
        return lost

    def _ask_control(self, addr: str, now: float) -> list[Effect]:
        """Ask ``addr`` for its control messages, at most once per request timeout."""
        if now < self._control_asked.get(addr, -1e18) + self.config.request_timeout_s:
            return []
        self._control_asked[addr] = now
        if len(self._control_asked) > self.config.seen_max:
            self._control_asked.pop(next(iter(self._control_asked)))
        return [Send(addr, ControlRequest(self.node_id, self.fencing.epoch))]

    def _send_control(self, addr: str) -> list[Effect]:
        return [Send(addr, s.msg, s.raw, Route.REPAIR) for s in self.fencing.control_messages()]

    # -- anti-entropy ---------------------------------------------------------------------------

    def _gossip_digest(self) -> list[Effect]:
        peers = list(self._members.values())
        if not peers:
            return []
        publisher = self._members.get(self.config.publisher_id)
        unheard = publisher is not None and publisher.node_id not in self._views
        if publisher is not None and unheard and self.rng.random() < TRAINER_FIRST_SHARE:
            # Until it has heard the trainer once, a node asks the trainer itself on most
            # rounds (its reply says how far behind the node is: peers that joined as empty
            # prove nothing), and its own datacenter on the others (the trainer may be cut off).
            return [Send(publisher.addr, digest_of(self.node_id, self.store, self.fencing.epoch))]
        local = [m for m in peers if m.dc == self.dc and m.node_id != self.config.publisher_id]
        remote = [m for m in peers if m.dc != self.dc or m.node_id == self.config.publisher_id]
        wan = not local or (remote and self.rng.random() < self.config.wan_sync_share)
        pool = remote if wan else local
        peer = pool[int(self.rng.integers(0, len(pool)))]
        return [Send(peer.addr, digest_of(self.node_id, self.store, self.fencing.epoch))]

    def _on_digest(self, digest: SyncDigest, addr: str, now: float) -> list[Effect]:
        member = self._members.get(digest.sender)
        if member is None:
            return []
        if len(digest.vector) != self.store.layout.n_shards:
            # Kept as a peer view, a vector of another length failed every later pull (an
            # index past its end): one lying allow-listed peer stopped the node's ticks.
            self.counters.rejected += 1
            return [Note("digest_rejected", {"shards": len(digest.vector), "addr": addr})]
        self._views[digest.sender] = PeerView(digest, member.dc, now)
        effects: list[Effect] = []
        if digest.epoch > self.fencing.epoch or (
            digest.epoch == self.fencing.epoch
            and len(digest.watermark) == self.store.layout.n_shards
            and not self.store.watermark.dominates(digest.watermark)
        ):
            effects += self._ask_control(addr, now)
        differs = digest.root != self.store.root or digest.epoch != self.fencing.epoch
        if not digest.is_reply and differs:
            effects.append(
                Send(addr, digest_of(self.node_id, self.store, self.fencing.epoch, is_reply=True))
            )
        for shard in behind_shards(self.store, self.fencing.epoch, digest):
            self._behind.setdefault(shard, now)
        diverged = diverged_shards(self.store, self.fencing.epoch, digest)
        if diverged:
            effects.append(Send(addr, request_for(self.node_id, self.store, diverged, True)))
        return effects

    def _pull_time(self, shard: int, since: float) -> float:
        """When a shard seen behind at ``since`` may be pulled: after the grace period, and
        not before an unanswered earlier pull has timed out."""
        asked = self._asked.get(shard)
        due = since + self.config.repair_grace_s
        return due if asked is None else max(due, asked + self.config.request_timeout_s)

    def _pull_due(self, now: float) -> list[Effect]:
        """Pull the shards that stayed behind past the grace period, grouped by source."""
        by_source: dict[str, list[int]] = {}
        for shard, since in list(self._behind.items()):
            if now < self._pull_time(shard, since):
                continue
            target = self._best_known(shard)
            if target <= int(self.store.vector_view[shard]):
                del self._behind[shard]
                continue
            source = pick_source(
                shard,
                target,
                self._views,
                self.dc,
                self.rng,
                self.fencing.epoch,
                self.config.publisher_id,
                by_source,
            )
            if source is None:
                del self._behind[shard]
                continue
            by_source.setdefault(source, []).append(shard)
            self._asked[shard] = now
        effects: list[Effect] = []
        for source, shards in by_source.items():
            addr = self._addr_of(source)
            if addr is not None:
                self.counters.pulls += 1
                effects.append(Send(addr, request_for(self.node_id, self.store, shards)))
        return effects

    def _best_known(self, shard: int) -> int:
        return max(
            (
                int(v.digest.vector.packed[shard])
                for v in self._views.values()
                if v.digest.epoch == self.fencing.epoch
            ),
            default=0,
        )

    def _on_request(self, request: SyncRequest, addr: str) -> list[Effect]:
        reply = serve(request, self.store, self.log, self.fencing, self.config.repair_deltas_max)
        effects: list[Effect] = []
        if reply.validated is not None and self.fencing.validated is not None:
            effects.append(Send(addr, self.fencing.validated.msg, reply.validated, Route.REPAIR))
        effects += [Send(addr, snap) for snap in reply.snapshots]
        effects += [Send(addr, e.delta, e.raw, Route.REPAIR) for e in reply.deltas]
        return effects

    def _on_snapshot(self, snap: ShardSnapshot, raw: object) -> list[Effect]:
        shard_ok = 0 <= snap.shard < self.store.layout.n_shards
        if shard_ok and snap.version < int(self.store.vector_view[snap.shard]):
            self.counters.duplicates += 1  # a late answer: taking it would go back in time
            return []
        if not self._snapshot_verified(snap):
            self.counters.rejected += 1
            return [Note("snapshot_rejected", {"shard": snap.shard})]
        try:
            restore_shard(self.store, snap.data)
        except SnapshotError as exc:
            self.counters.rejected += 1
            return [Note("snapshot_rejected", {"shard": snap.shard, "reason": str(exc)})]
        self.log.reset_shard(snap.shard, snap.version)
        self.counters.repaired += 1
        self._behind.pop(snap.shard, None)
        # Logged like a delta: the deltas logged after it replay on top of it after a crash
        # (verified again against the signed digests of the Validated logged before it).
        restored: list[Effect] = [Persist(raw), Note("snapshot_restored", {"shard": snap.shard})]
        return [*restored, *self._retry_held()]

    def _snapshot_verified(self, snap: ShardSnapshot) -> bool:
        """Only a snapshot whose BLAKE3 the trainer signed (in the newest Validated) is taken."""
        signed = self.fencing.validated
        if signed is None or not 0 <= snap.shard < self.store.layout.n_shards:
            return False
        validated = signed.msg
        assert isinstance(validated, Validated)
        if int(validated.vector.packed[snap.shard]) != snap.version:
            return False
        expected = validated.shard_digests[32 * snap.shard : 32 * snap.shard + 32]
        return len(expected) == 32 and strong_digest(snap.data) == expected

    # -- checks ----------------------------------------------------------------------------------

    def validate(self) -> None:
        """Internal consistency (tests and simulation); raises AssertionError."""
        self.store.validate_state()
        assert len(self._gap) <= self.config.gap_buffer_max, "gap buffer over its bound"
        assert len(self._seen) <= self.config.seen_max, "seen set over its bound"
        assert self.log.nbytes <= self.config.delta_log_bytes_max, "delta log over its bound"


def _control_epoch(msg: Validated | Rollback) -> int:
    return msg.epoch if isinstance(msg, Validated) else msg.new_epoch


__all__ = ["Counters", "Replica", "ReplicaConfig"]
