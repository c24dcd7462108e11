"""SWIM membership with Lifeguard extensions, as a pure (sans-IO) state machine.

In the style of hashicorp/memberlist, but like h11/aioquic it never reads the clock, never does
I/O and never draws from global randomness: drivers pass ``now`` (seconds) into every call, carry
out the returned ``Send`` effects, and call ``tick`` at ``next_deadline()``.

- Failure detection: every probe interval one member (shuffled round-robin) gets a ``Ping``;
  without an ack within the probe timeout, ``indirect_checks`` helpers probe it (``PingReq``)
  and answer with its ack or a ``Nack``; without any ack by the end of the interval it becomes
  suspect. A suspicion ends in death unless the member refutes it by raising its incarnation.
- Dissemination: every accepted change is queued once and piggybacked on pings, acks and gossip
  rounds ``retransmit_mult * ceil(log10(n + 1))`` times (``piggyback``/``merge`` let other
  layers carry it too).
- Lifeguard: missed acks, missing nacks and refuted accusations raise the local-health
  multiplier, which stretches this node's probe interval, probe timeout and suspicion timeouts;
  suspicions start long and shrink with independent confirmations.
- Joining and healing: a push-pull full-state exchange with the seeds at start (repeated while
  alone) and with a random seed every ``rejoin_interval_s`` merges the two sides of a partition
  that outlasted the dead-node timeout. Dead records from a push-pull only raise suspicion, so
  the accused can refute.
- Restarts: a node restarted under its id (incarnation 0, maybe a new address) refutes every
  record of itself that it did not write, so its new incarnation and address win everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from p2prec.core.effects import Send
from p2prec.core.membership_config import MembershipConfig
from p2prec.core.membership_health import LocalHealth
from p2prec.core.membership_messages import (
    INCARNATION_MAX,
    MESSAGE_TYPES,
    Ack,
    Gossip,
    MemberRecord,
    MembershipMessage,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPull,
    from_body,
    to_body,
)
from p2prec.core.membership_table import MembershipCounters, MemberTable

__all__ = [
    "Ack",
    "Gossip",
    "MemberRecord",
    "MemberState",
    "Membership",
    "MembershipConfig",
    "MembershipCounters",
    "MembershipMessage",
    "Nack",
    "Ping",
    "PingReq",
    "PushPull",
    "Send",
    "from_body",
    "to_body",
]

ALIVE, SUSPECT, DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD
NACK_TIMEOUT_SHARE = 0.8  # a helper nacks after this share of the probe timeout (memberlist)


@dataclass
class _Probe:
    seq: int
    target_id: str
    indirect_at: float  # no direct ack by then: ask helpers
    deadline: float  # no ack at all by then: suspect the target
    helpers: int = 0
    nacks: int = 0
    indirect_sent: bool = False


@dataclass(frozen=True)
class _Relay:
    """A probe this node runs on behalf of another (indirect probe)."""

    requester_addr: str
    requester_seq: int
    nack_at: float


class Membership:
    """One node's membership view (see module docstring)."""

    def __init__(
        self,
        self_id: str,
        self_addr: str,
        dc: str,
        config: MembershipConfig,
        rng: np.random.Generator,
        seeds: list[str],
        admit: Callable[[str], bool] = lambda node_id: True,
    ) -> None:
        self.self_id, self.self_addr, self.dc = self_id, self_addr, dc
        self.config = config
        self.counters = MembershipCounters()
        self._rng = rng
        self._seeds = [s for s in dict.fromkeys(seeds) if s != self_addr]
        self._health = LocalHealth(config.awareness_max_multiplier)
        me = MemberRecord(self_id, self_addr, dc, 0, ALIVE, self_id)
        self._table = MemberTable(
            me, config, self._health, self.counters, self._add_to_probe_order, admit
        )
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._seq = int(rng.integers(1 << 31))
        self._started = False
        self._next_probe_at = self._next_gossip_at = self._next_rejoin_at = 0.0

    # -- queries ---------------------------------------------------------------------------------

    @property
    def local_health(self) -> int:
        """Lifeguard's multiplier: 1 when healthy, up to ``awareness_max_multiplier``."""
        return self._health.multiplier

    @property
    def incarnation(self) -> int:
        return self._table.me.incarnation

    def members(self) -> list[MemberRecord]:
        """Every known record, this node's own included, dead and left ones until reclaimed."""
        return list(self._table.records.values())

    def alive_members(self) -> list[MemberRecord]:
        """Members presumed alive: alive and suspect ones (a suspect is alive until declared
        dead, as in memberlist), this node included unless it left."""
        return self._table.presumed_alive()

    def member(self, node_id: str) -> MemberRecord | None:
        return self._table.records.get(node_id)

    def drain_changes(self) -> list[MemberRecord]:
        """Records of other nodes whose state, address or datacenter changed since the last
        call (joined, suspect, dead, left, alive again, moved), oldest first."""
        return self._table.drain_changes()

    def handles(self, msg: object) -> bool:
        return isinstance(msg, MESSAGE_TYPES)

    def seeds(self) -> list[str]:
        return list(self._seeds)

    # -- piggyback for other layers --------------------------------------------------------------

    def piggyback(self, max_items: int) -> list[MemberRecord]:
        """Up to ``max_items`` queued updates; each counts as one transmission."""
        return self._table.piggyback(max_items)

    def merge(self, updates: list[MemberRecord], now: float) -> None:
        """Apply updates that another layer's message carried."""
        self._start(now)
        self._table.merge(updates, now)

    # -- events ----------------------------------------------------------------------------------

    def receive(self, msg: object, from_addr: str, now: float) -> list[Send]:
        """Handle a membership message from ``from_addr``; bad input is counted and ignored."""
        self._start(now)
        if not isinstance(msg, Ping | Ack | PingReq | Nack | Gossip | PushPull) or not (
            isinstance(msg.sender_id, str)
        ):
            self.counters.bad_input += 1
            return []
        if isinstance(msg, PushPull):
            return self._on_push_pull(msg, from_addr, now)
        if isinstance(msg, Nack):
            self._on_nack(msg)
            return []
        self._table.merge(msg.updates, now)
        if isinstance(msg, Ping):
            return self._on_ping(msg, from_addr)
        if isinstance(msg, Ack):
            return self._on_ack(msg)
        if isinstance(msg, PingReq):
            return self._on_ping_req(msg, from_addr, now)
        return []  # Gossip: its updates were the point

    def tick(self, now: float) -> list[Send]:
        """Run every timer that is due at ``now``."""
        self._start(now)
        sends = self._run_probe(now)
        sends += self._run_relays(now)
        self._table.expire_suspicions(now)
        sends += self._run_gossip(now)
        sends += self._run_rejoin(now)
        self._table.reclaim(now)
        return sends

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work; 0.0 before the first call (tick at once)."""
        if not self._started:
            return 0.0
        times = self._table.deadlines()
        times += [r.nack_at for r in self._relays.values()]
        if self._probe is not None:
            probe = self._probe
            times.append(probe.deadline if probe.indirect_sent else probe.indirect_at)
        if not self._left:
            times.append(self._next_probe_at)
            if self._seeds:
                times.append(self._next_rejoin_at)
        if len(self._table.broadcasts):
            times.append(self._next_gossip_at)
        return min(times) if times else None

    def leave(self, now: float) -> list[Send]:
        """Leave gracefully: announce it, stop probing and re-joining (keeps gossiping)."""
        self._start(now)
        self._table.leave()
        self._probe = None
        self._next_gossip_at = now
        return self._run_gossip(now)

    # -- message handlers ------------------------------------------------------------------------

    def _on_ping(self, ping: Ping, from_addr: str) -> list[Send]:
        if ping.target_id != self.self_id:
            self.counters.misdirected += 1
            return []
        updates = self._updates_for(ping.sender_id, from_addr)
        return [Send(from_addr, Ack(ping.seq, self.self_id, updates))]

    def _on_ack(self, ack: Ack) -> list[Send]:
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            forwarded = Ack(relay.requester_seq, self.self_id, self._updates_for(None))
            return [Send(relay.requester_addr, forwarded)]
        probe = self._probe
        if probe is not None and ack.seq == probe.seq:
            self._probe = None
            if not probe.indirect_sent:
                self._health.apply(-1)
        return []

    def _on_nack(self, nack: Nack) -> None:
        if self._probe is not None and nack.seq == self._probe.seq:
            self._probe.nacks += 1

    def _on_ping_req(self, req: PingReq, from_addr: str, now: float) -> list[Send]:
        if req.target_id == self.self_id:
            return [Send(from_addr, Ack(req.seq, self.self_id, self._updates_for(req.sender_id)))]
        if len(self._relays) >= self.config.members_max:
            self.counters.dropped += 1
            return []
        seq = self._next_seq()
        nack_at = now + NACK_TIMEOUT_SHARE * self.config.probe_timeout_s
        self._relays[seq] = _Relay(from_addr, req.seq, nack_at)
        updates = self._updates_for(req.target_id, req.target_addr)
        return [Send(req.target_addr, Ping(seq, self.self_id, req.target_id, updates))]

    def _on_push_pull(self, msg: PushPull, from_addr: str, now: float) -> list[Send]:
        self._table.merge(msg.members, now, full_state=True)
        if msg.is_reply:
            return []
        return [Send(from_addr, PushPull(self.self_id, self.members(), is_reply=True))]

    def _updates_for(self, peer_id: str | None, peer_addr: str | None = None) -> list[MemberRecord]:
        """Piggyback for a message to ``peer_id`` at ``peer_addr``, led by what we believe of it
        when that is not "alive" at that address, so that it can refute (outbid) it at once: a
        wrongly suspected node, or one restarted at a new address that others know at its old
        one with the same incarnation."""
        record = self.member(peer_id) if peer_id is not None else None
        if record is None or (record.state is ALIVE and peer_addr in (None, record.addr)):
            return self.piggyback(self.config.max_piggyback)
        rest = self.piggyback(self.config.max_piggyback - 1)
        return [record, *(r for r in rest if r.node_id != peer_id)]

    # -- probing (SWIM with Lifeguard's local health) --------------------------------------------

    def _start(self, now: float) -> None:
        if self._started:
            return
        self._started = True
        self._next_probe_at = now + float(self._rng.uniform(0, self.config.probe_interval_s))
        self._next_gossip_at = now + float(self._rng.uniform(0, self.config.gossip_interval_s))
        self._next_rejoin_at = now

    def _run_probe(self, now: float) -> list[Send]:
        sends: list[Send] = []
        probe = self._probe
        if probe is not None and not probe.indirect_sent and now >= probe.indirect_at:
            sends += self._send_indirect(probe)
        if probe is not None and now >= probe.deadline:
            self._probe = None
            self._probe_failed(probe, now)
        if not self._left and now >= self._next_probe_at:
            sends += self._start_probe(now)
        return sends

    def _start_probe(self, now: float) -> list[Send]:
        interval_s = self._health.scale(self.config.probe_interval_s)
        self._next_probe_at = now + interval_s
        target = self._next_probe_target()
        if target is None:
            return []
        seq = self._next_seq()
        indirect_at = now + self._health.scale(self.config.probe_timeout_s)
        self._probe = _Probe(seq, target.node_id, indirect_at, now + interval_s)
        self.counters.probes += 1
        ping = Ping(seq, self.self_id, target.node_id, self._updates_for(target.node_id))
        return [Send(target.addr, ping)]

    def _send_indirect(self, probe: _Probe) -> list[Send]:
        probe.indirect_sent = True
        target = self.member(probe.target_id)
        if target is None:
            return []
        exclude = {self.self_id, probe.target_id}
        helpers = self._random_members(self.config.indirect_checks, (ALIVE,), exclude)
        probe.helpers = len(helpers)
        sends = []
        for helper in helpers:
            updates = self._updates_for(helper.node_id)
            req = PingReq(probe.seq, self.self_id, target.node_id, target.addr, updates)
            sends.append(Send(helper.addr, req))
        return sends

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        self.counters.probes_failed += 1
        # Lifeguard: helpers that neither acked nor nacked suggest that this node is the slow
        # one; without helpers, every failed probe counts against this node.
        self._health.apply(probe.helpers - probe.nacks if probe.helpers else 1)
        self._table.suspect_after_probe(probe.target_id, now)

    def _run_relays(self, now: float) -> list[Send]:
        due = [seq for seq, relay in self._relays.items() if relay.nack_at <= now]
        sends = []
        for seq in due:
            relay = self._relays.pop(seq)
            sends.append(Send(relay.requester_addr, Nack(relay.requester_seq, self.self_id)))
        return sends

    def _add_to_probe_order(self, node_id: str) -> None:
        """Insert a new member at a random place among those not yet probed this round."""
        position = int(self._rng.integers(self._probe_index, len(self._probe_order) + 1))
        self._probe_order.insert(position, node_id)

    def _next_probe_target(self) -> MemberRecord | None:
        """Shuffled round-robin over the members presumed alive (memberlist)."""
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                record = self.member(self._probe_order[self._probe_index])
                self._probe_index += 1
                if record is not None and record.state in (ALIVE, SUSPECT):
                    return record
            self._reshuffle_probe_order()
        return None

    def _reshuffle_probe_order(self) -> None:
        ids = [r.node_id for r in self.alive_members() if r.node_id != self.self_id]
        self._probe_order = [ids[int(i)] for i in self._rng.permutation(len(ids))]
        self._probe_index = 0

    # -- gossip and re-join ----------------------------------------------------------------------

    def _run_gossip(self, now: float) -> list[Send]:
        if now < self._next_gossip_at:
            return []
        self._next_gossip_at = now + self.config.gossip_interval_s
        if not len(self._table.broadcasts):
            return []
        sends = []
        # Recently dead members get gossip too, so that a wrongly declared one can refute.
        for peer in self._random_members(self.config.gossip_nodes, (ALIVE, SUSPECT, DEAD)):
            updates = self.piggyback(self.config.max_piggyback)
            if not updates:
                break
            sends.append(Send(peer.addr, Gossip(self.self_id, updates)))
        return sends

    def _run_rejoin(self, now: float) -> list[Send]:
        if self._left or not self._seeds or now < self._next_rejoin_at:
            return []
        if self._table.cluster_size() <= 1:
            self._next_rejoin_at = now + self.config.join_retry_interval_s
            addrs = self._seeds
        else:
            self._next_rejoin_at = now + self.config.rejoin_interval_s
            addrs = [self._pick_seed()]
        return [Send(a, PushPull(self.self_id, self.members(), is_reply=False)) for a in addrs]

    def _pick_seed(self) -> str:
        """A random seed, preferring those not known as a live member's address (they are the
        ones across a partition)."""
        live_addrs = {r.addr for r in self.alive_members()}
        unknown = [s for s in self._seeds if s not in live_addrs]
        choices = unknown or self._seeds
        return choices[int(self._rng.integers(len(choices)))]

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def _left(self) -> bool:
        return self._table.me.state is MemberState.LEFT

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % INCARNATION_MAX
        return self._seq

    def _random_members(
        self, count: int, states: tuple[MemberState, ...], exclude: set[str] | None = None
    ) -> list[MemberRecord]:
        skip = exclude if exclude is not None else {self.self_id}
        records = self._table.records.values()
        pool = [r for r in records if r.state in states and r.node_id not in skip]
        if len(pool) <= count:
            return pool
        picks = self._rng.choice(len(pool), size=count, replace=False)
        return [pool[int(i)] for i in picks]

    # -- invariants ------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check internal invariants; raises AssertionError (for tests and the simulator)."""
        me = self._table.me
        assert (me.node_id, me.addr, me.dc) == (self.self_id, self.self_addr, self.dc), me
        self._table.validate()
        assert len(self._relays) <= self.config.members_max, "relays over their bound"
        assert self.self_addr not in self._seeds, "own address among the seeds"
        probe = self._probe
        if probe is not None:
            assert probe.target_id != self.self_id, "probing itself"
            assert probe.indirect_at <= probe.deadline, probe
            assert probe.nacks >= 0, probe
        if self._left:
            assert probe is None, "probing after leaving"
