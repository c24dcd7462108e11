"""The member table and its merge rules (memberlist's aliveNode / suspectNode / deadNode).

Incarnation rules: only a node raises its own incarnation. ``alive`` wins over a record with a
lower incarnation (a newer life, maybe at a new address); ``suspect`` wins over ``alive`` with the
same or a lower incarnation and starts a suspicion timer; ``dead``/``left`` win over anything
with the same or a lower incarnation. A record of this node that it did not write (an accusation,
or an older life at the same or a higher incarnation) is refuted by outbidding it.

Bounds on what gossip may claim (SWIM messages are not signed: any allow-listed key can say
anything about anyone). A node raises its incarnation by one per refutation, so a record of
another node more than INCARNATION_JUMP_MAX above the life known here, or of an unknown node
above it, is a forgery and is dropped; an accusation (suspect, dead, left) is taken as about
the life known here, never a later one. Without the bounds one record, "dead at the highest
incarnation", evicted a node that could never outbid it.

A new member is admitted only if ``admit`` accepts its id: a driver admits the ids it holds a
CURVE key for, the only nodes it could exchange a message with, so that gossip cannot put a
made-up member (a "ghost" nobody can reach) into the dissemination trees.

Every accepted change is noted for ``drain_changes`` and queued for gossip.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from p2prec.core.membership_broadcast import BroadcastQueue, retransmit_limit
from p2prec.core.membership_config import MembershipConfig
from p2prec.core.membership_health import LocalHealth
from p2prec.core.membership_messages import INCARNATION_MAX, MemberRecord, MemberState, is_sane
from p2prec.core.membership_suspicion import Suspicion, suspicion_min_s

ALIVE, SUSPECT = MemberState.ALIVE, MemberState.SUSPECT
DEAD, LEFT = MemberState.DEAD, MemberState.LEFT
PROBED = (ALIVE, SUSPECT)  # presumed alive: probed, and counted in the cluster size
GONE = (DEAD, LEFT)
CHANGES_MAX = 65536  # undrained changes kept (the oldest are dropped beyond)
INCARNATION_JUMP_MAX = 1 << 20  # refutations a node may make between two records of it heard


@dataclass
class MembershipCounters:
    """What happened, for metrics and tests."""

    probes: int = 0  # direct probes sent
    probes_failed: int = 0  # probes that ended without any ack
    suspicions_raised: int = 0  # alive members this node began to suspect after its own probe
    deaths_declared: int = 0  # suspicions that timed out here
    refutations: int = 0  # incarnation raises to refute a record of this node
    bad_input: int = 0  # malformed messages or records, ignored
    misdirected: int = 0  # pings meant for another node (a reused address)
    dropped: int = 0  # new members, relays or changes dropped at their bound
    refused: int = 0  # new members refused: an identity this node does not admit (no key)


class MemberTable:
    """Records by node id, this node's own included, with suspicions and the gossip queue."""

    def __init__(
        self,
        me: MemberRecord,
        config: MembershipConfig,
        health: LocalHealth,
        counters: MembershipCounters,
        on_new_member: Callable[[str], None],
        admit: Callable[[str], bool] = lambda node_id: True,
    ) -> None:
        self.self_id = me.node_id
        self.on_new_member = on_new_member  # e.g. to schedule its first probe
        self.admit = admit  # may a node of this id join the table (e.g. it has a CURVE key)
        self.config = config
        self.health = health
        self.counters = counters
        self.records: dict[str, MemberRecord] = {me.node_id: me}
        self.gone_since: dict[str, float] = {}  # dead/left member -> since when
        self.suspicions: dict[str, Suspicion] = {}
        self.broadcasts = BroadcastQueue()
        self.broadcasts.push(me)
        self._changes: deque[MemberRecord] = deque()
        self._cluster_size: int | None = None  # cached; reset whenever a state changes

    # -- queries ---------------------------------------------------------------------------------

    @property
    def me(self) -> MemberRecord:
        return self.records[self.self_id]

    def presumed_alive(self) -> list[MemberRecord]:
        return [r for r in self.records.values() if r.state in PROBED]

    def cluster_size(self) -> int:
        if self._cluster_size is None:
            self._cluster_size = sum(1 for r in self.records.values() if r.state in PROBED)
        return self._cluster_size

    def piggyback(self, max_items: int) -> list[MemberRecord]:
        limit = retransmit_limit(self.config.retransmit_mult, self.cluster_size())
        return self.broadcasts.take(max_items, limit)

    def drain_changes(self) -> list[MemberRecord]:
        changes = list(self._changes)
        self._changes.clear()
        return changes

    def deadlines(self) -> list[float]:
        """When suspicions expire and dead records may be forgotten."""
        times = [s.deadline for s in self.suspicions.values()]
        times += [t + self.config.dead_node_reclaim_s for t in self.gone_since.values()]
        return times

    # -- merging ---------------------------------------------------------------------------------

    def merge(self, records: object, now: float, full_state: bool = False) -> None:
        """Apply peer records; in a full-state exchange (push-pull) a "dead" record only raises
        suspicion, so that a node the other side gave up on can still refute (memberlist)."""
        if not isinstance(records, list):
            self.counters.bad_input += 1
            return
        for item in records[: self.config.members_max]:
            if not is_sane(item):
                self.counters.bad_input += 1
                continue
            record: MemberRecord = item
            if full_state and record.state is DEAD:
                record = replace(record, state=SUSPECT)
            self.apply(record, now)

    def apply(self, record: MemberRecord, now: float) -> None:
        if record.node_id == self.self_id:
            self._about_self(record)
            return
        current = self.records.get(record.node_id)
        bounded = self._bounded(record, current)
        if bounded is None:
            self.counters.bad_input += 1
            return
        record = bounded
        if record.state is ALIVE:
            self._on_alive(record, current, now)
        elif current is None or record.incarnation < current.incarnation:
            return  # news about unknown nodes or older lives is ignored
        elif record.state is SUSPECT:
            self._on_suspect(record, current, now)
        elif current.state not in GONE:
            self._accept(record, now)

    @staticmethod
    def _bounded(record: MemberRecord, current: MemberRecord | None) -> MemberRecord | None:
        """``record`` within what its node can have done (module docstring), None if not."""
        known = current.incarnation if current is not None else 0
        if record.incarnation <= known:
            return record
        if record.state is not ALIVE:  # about the life known here (or ignored: unknown node)
            return replace(record, incarnation=known) if current is not None else record
        return record if record.incarnation - known <= INCARNATION_JUMP_MAX else None

    def _on_alive(self, record: MemberRecord, current: MemberRecord | None, now: float) -> None:
        # Same incarnation at another address: a restarted node that has not yet outbid its
        # old life; it will once it sees the old record (Membership leads replies with it).
        if current is not None and record.incarnation <= current.incarnation:
            return
        if current is None and len(self.records) >= self.config.members_max:
            self.counters.dropped += 1
            return
        if current is None and not self.admit(record.node_id):
            self.counters.refused += 1  # a made-up member ("ghost"): never in a tree
            return
        self._accept(replace(record, reporter=record.node_id), now)
        if current is None:
            self.on_new_member(record.node_id)

    def _on_suspect(self, record: MemberRecord, current: MemberRecord, now: float) -> None:
        if current.state in GONE:
            return
        suspicion = self.suspicions.get(record.node_id)
        if suspicion is None:
            self._start_suspicion(record, now)
            return
        if suspicion.confirm(record.reporter):
            self.broadcasts.push(record)  # spread the confirmation: others count it too

    def _start_suspicion(self, record: MemberRecord, now: float) -> None:
        n = self.cluster_size()
        expected = self.config.suspicion_mult - 2
        if n - 2 < expected:
            expected = 0  # too few others to confirm: just the base timeout
        base_s = suspicion_min_s(self.config.suspicion_mult, n, self.config.probe_interval_s)
        min_s = self.health.scale(base_s)
        max_s = min_s * self.config.suspicion_max_timeout_mult
        self.suspicions[record.node_id] = Suspicion(now, min_s, max_s, expected, record.reporter)
        self._accept(record, now)

    def _accept(self, record: MemberRecord, now: float) -> None:
        """Store ``record`` as the truth about its node, note the change, and spread it."""
        node_id = record.node_id
        previous = self.records.get(node_id)
        self.records[node_id] = record
        self._cluster_size = None
        if record.state is not SUSPECT:
            self.suspicions.pop(node_id, None)
        if record.state in GONE:
            self.gone_since[node_id] = now
        else:
            self.gone_since.pop(node_id, None)
        if previous is None or _visible(previous) != _visible(record):
            self._note_change(record)
        self.broadcasts.push(record)

    def _note_change(self, record: MemberRecord) -> None:
        if len(self._changes) >= CHANGES_MAX:
            self._changes.popleft()
            self.counters.dropped += 1
        self._changes.append(record)

    # -- this node's own record ------------------------------------------------------------------

    def _about_self(self, record: MemberRecord) -> None:
        me = self.me
        if me.state is LEFT or record.incarnation < me.incarnation:
            return
        if record.state is ALIVE and _life(record) == _life(me):
            return
        seen = record.incarnation
        if seen - me.incarnation > INCARNATION_JUMP_MAX:  # forged (peers drop or clamp it)
            self.counters.bad_input += 1
            seen = me.incarnation
        self._refute(seen, accused=record.state is not ALIVE)

    def _refute(self, seen_incarnation: int, accused: bool) -> None:
        """Outbid a record of this node it did not write (an accusation or an older life)."""
        if seen_incarnation >= INCARNATION_MAX:
            self.counters.bad_input += 1
            return
        me = replace(self.me, incarnation=seen_incarnation + 1, state=ALIVE)
        self.records[self.self_id] = me
        self.broadcasts.push(me)
        self.counters.refutations += 1
        if accused:
            self.health.apply(1)  # Lifeguard: being accused hints that we are the slow one

    def leave(self) -> None:
        left = replace(self.me, incarnation=min(self.me.incarnation + 1, INCARNATION_MAX))
        left = replace(left, state=LEFT)
        self.records[self.self_id] = left
        self._cluster_size = None
        self.broadcasts.push(left)

    # -- timers ----------------------------------------------------------------------------------

    def suspect_after_probe(self, node_id: str, now: float) -> None:
        """This node's own probe of ``node_id`` failed: suspect it, or confirm a suspicion."""
        target = self.records.get(node_id)
        if target is None or target.state not in PROBED:
            return
        if target.state is ALIVE:
            self.counters.suspicions_raised += 1
        self.apply(replace(target, state=SUSPECT, reporter=self.self_id), now)

    def expire_suspicions(self, now: float) -> None:
        due = [node_id for node_id, s in self.suspicions.items() if s.deadline <= now]
        for node_id in due:
            self.counters.deaths_declared += 1
            self._accept(replace(self.records[node_id], state=DEAD, reporter=self.self_id), now)

    def reclaim(self, now: float) -> None:
        """Forget dead and left members after ``dead_node_reclaim_s``."""
        reclaim_s = self.config.dead_node_reclaim_s
        expired = [i for i, since in self.gone_since.items() if since + reclaim_s <= now]
        for node_id in expired:
            del self.gone_since[node_id]
            del self.records[node_id]
            self.broadcasts.discard(node_id)
            self._cluster_size = None

    # -- invariants ------------------------------------------------------------------------------

    def validate(self) -> None:
        me = self.records.get(self.self_id)
        assert me is not None and me.reporter == self.self_id, me
        assert me.state in (ALIVE, LEFT), f"own state {me.state}"
        assert len(self.records) <= self.config.members_max, "member table over its bound"
        for node_id, record in self.records.items():
            assert record.node_id == node_id and is_sane(record), record
        others = {i: r for i, r in self.records.items() if i != self.self_id}
        suspects = {i for i, r in others.items() if r.state is SUSPECT}
        assert set(self.suspicions) == suspects, (set(self.suspicions), suspects)
        gone = {i for i, r in others.items() if r.state in GONE}
        assert set(self.gone_since) == gone, (set(self.gone_since), gone)
        for record, transmits in self.broadcasts.queued():
            held = self.records.get(record.node_id)
            assert held is not None, f"queued update about a forgotten node {record.node_id}"
            assert record.incarnation <= held.incarnation, (record, held)
            assert transmits >= 0
        assert 1 <= self.health.multiplier <= self.config.awareness_max_multiplier
        size = sum(1 for r in self.records.values() if r.state in PROBED)
        assert self.cluster_size() == size, (self.cluster_size(), size)


def _visible(record: MemberRecord) -> tuple[MemberState, str, str]:
    """What other layers care about: a change of any of these is reported."""
    return record.state, record.addr, record.dc


def _life(record: MemberRecord) -> tuple[int, str, str]:
    return record.incarnation, record.addr, record.dc
