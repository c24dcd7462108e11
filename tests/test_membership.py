"""SWIM membership (p2prec.core.membership) on a tiny deterministic in-test network.

Everything runs on a virtual clock: a heap of (deliver_time, message) plus each node's
``next_deadline()``. No sleeps; ``validate()`` runs after every step of every node.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from p2prec.core.membership import (
    Ack,
    Gossip,
    MemberRecord,
    Membership,
    MembershipConfig,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Send,
    from_body,
    to_body,
)
from p2prec.core.membership_broadcast import BroadcastQueue, retransmit_limit
from p2prec.core.membership_messages import INCARNATION_MAX, MembershipDecodeError
from p2prec.core.membership_suspicion import Suspicion, suspicion_min_s
from p2prec.core.membership_table import INCARNATION_JUMP_MAX

ALIVE, SUSPECT = MemberState.ALIVE, MemberState.SUSPECT
DEAD, LEFT = MemberState.DEAD, MemberState.LEFT
IDS = ["n0", "n1", "n2", "n3", "n4"]
TraceEntry = tuple[float, str, str, str, int, str]  # time, observer, node, state, inc, addr


# -- the in-test network ---------------------------------------------------------------------------


@dataclass(order=True)
class _InFlight:
    deliver_at: float
    seq: int
    src: str = field(compare=False)
    dst: str = field(compare=False)
    msg: object = field(compare=False)


class Net:
    """N Membership instances on a virtual clock, with crashes, partitions, loss and slowness."""

    def __init__(self, seed: int, config: MembershipConfig | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.config = config or MembershipConfig()
        self.now = 0.0
        self.nodes: dict[str, Membership] = {}  # by address
        self.down: set[str] = set()  # crashed addresses
        self.groups: list[set[str]] = []  # partition: node ids in different groups can't talk
        self.drop_share = 0.0
        self.inbound_delay_s: dict[str, float] = {}  # by node id: a starved node's backlog
        self.trace: list[TraceEntry] = []
        self.deliveries: list[tuple[float, str, str]] = []  # time, src addr, dst addr
        self._flight: list[_InFlight] = []
        self._seq = itertools.count()

    def add(self, node_id: str, addr: str, seeds: list[str], dc: str = "dc0") -> Membership:
        rng = np.random.default_rng(int(self.rng.integers(2**63)))
        node = Membership(node_id, addr, dc, self.config, rng, seeds)
        self.nodes[addr] = node
        return node

    def by_id(self, node_id: str) -> Membership:
        live = [m for a, m in self.nodes.items() if m.self_id == node_id and a not in self.down]
        assert len(live) == 1, node_id
        return live[0]

    def live(self) -> list[Membership]:
        return [m for a, m in self.nodes.items() if a not in self.down]

    def crash(self, node_id: str) -> None:
        self.down.add(self.by_id(node_id).self_addr)

    def _blocked(self, src: Membership, dst: Membership) -> bool:
        return any((src.self_id in g) != (dst.self_id in g) for g in self.groups)

    # -- the event loop --------------------------------------------------------------------------

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Advance virtual time up to ``end``; True as soon as ``stop()`` holds."""
        while True:
            if stop is not None and stop():
                return True
            tick_at, node = self._next_tick()
            msg_at = self._flight[0].deliver_at if self._flight else math.inf
            if min(tick_at, msg_at) > end:
                self.now = end
                return stop() if stop is not None else False
            if msg_at <= tick_at:
                self.now = msg_at
                self._deliver(heapq.heappop(self._flight))
            else:
                assert node is not None
                self.now = tick_at
                self._after(node, node.tick(self.now))

    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> bool:
        return self.run_until(self.now + seconds, stop)

    def _next_tick(self) -> tuple[float, Membership | None]:
        best: tuple[float, Membership | None] = (math.inf, None)
        for node in self.live():
            deadline = node.next_deadline()
            if deadline is not None and max(deadline, self.now) < best[0]:
                best = (max(deadline, self.now), node)
        return best

    def _deliver(self, flight: _InFlight) -> None:
        dst = self.nodes.get(flight.dst)
        src = self.nodes[flight.src]
        if dst is None or flight.dst in self.down or self._blocked(src, dst):
            return
        self.deliveries.append((self.now, flight.src, flight.dst))
        self._after(dst, dst.receive(flight.msg, flight.src, self.now))

    def _after(self, node: Membership, sends: list[Send]) -> None:
        node.validate()
        for change in node.drain_changes():
            entry = (self.now, node.self_id, change.node_id, str(change.state), change.incarnation)
            self.trace.append((*entry, change.addr))
        for send in sends:
            self._send(node, send)

    def _send(self, node: Membership, send: Send) -> None:
        if self.drop_share and self.rng.random() < self.drop_share:
            return
        dst = self.nodes.get(send.addr)
        delay_s = float(self.rng.uniform(0.001, 0.005))
        if dst is not None:
            delay_s += self.inbound_delay_s.get(dst.self_id, 0.0)
        flight = _InFlight(self.now + delay_s, next(self._seq), node.self_addr, send.addr, send.msg)
        heapq.heappush(self._flight, flight)

    # -- views -----------------------------------------------------------------------------------

    def states_of(self, node_id: str, observers: list[str]) -> set[MemberState | None]:
        states: set[MemberState | None] = set()
        for observer in observers:
            record = self.by_id(observer).member(node_id)
            states.add(record.state if record is not None else None)
        return states

    def all_alive(self, ids: list[str]) -> bool:
        """Every node of ``ids`` sees every node of ``ids`` alive at its current address."""
        for observer in ids:
            view = self.by_id(observer)
            for node_id in ids:
                record = view.member(node_id)
                addr = self.by_id(node_id).self_addr
                if record is None or record.state is not ALIVE or record.addr != addr:
                    return False
        return True

    def declared(self, node_id: str, state: MemberState) -> list[TraceEntry]:
        return [e for e in self.trace if e[2] == node_id and e[3] == str(state)]


def cluster(seed: int, config: MembershipConfig | None = None, n: int = 5) -> Net:
    """``n`` nodes that all join through the first one's address."""
    net = Net(seed, config)
    for node_id in IDS[:n]:
        net.add(node_id, f"{node_id}@0", ["n0@0"])
    return net


def converged(seed: int, config: MembershipConfig | None = None) -> Net:
    net = cluster(seed, config)
    assert net.run_until(10.0, lambda: net.all_alive(IDS)), "no convergence"
    return net


# -- whole-cluster behaviour ---------------------------------------------------------------------


def test_five_nodes_join_via_one_seed_and_stay_alive() -> None:
    net = cluster(1)
    assert net.run_until(5.0, lambda: net.all_alive(IDS))
    net.run_for(60.0)
    assert net.all_alive(IDS)
    assert not [e for e in net.trace if e[3] != str(ALIVE)], "spurious suspicion"
    assert all(m.local_health == 1 for m in net.live())


def test_seed_started_late_is_joined_by_retries() -> None:
    net = Net(2)
    for node_id in IDS[1:]:
        net.add(node_id, f"{node_id}@0", ["n0@0"])
    net.run_until(3.0)
    net.add("n0", "n0@0", [])
    assert net.run_for(5.0, lambda: net.all_alive(IDS))


def test_crashed_node_is_declared_dead_by_all_then_forgotten() -> None:
    net = converged(3)
    crashed_at = net.now
    net.crash("n4")
    others = IDS[:4]
    assert net.run_for(30.0, lambda: net.states_of("n4", others) == {DEAD})
    detection_s = net.now - crashed_at
    assert detection_s < 20.0, detection_s
    for node_id in others:
        assert not net.declared(node_id, SUSPECT), "a healthy node was suspected"
    reclaim_s = net.config.dead_node_reclaim_s
    assert net.run_for(reclaim_s + 5.0, lambda: net.states_of("n4", others) == {None})


def test_wrongly_suspected_node_refutes_and_stays_alive() -> None:
    net = converged(4)
    net.groups = [{"n2"}]  # n2 is cut off until someone suspects it
    assert net.run_for(10.0, lambda: bool(net.declared("n2", SUSPECT)))
    net.groups = []
    assert net.run_for(10.0, lambda: net.all_alive(IDS))
    net.run_for(30.0)
    assert net.all_alive(IDS)
    assert not net.declared("n2", DEAD)
    assert net.by_id("n2").incarnation >= 1
    assert net.by_id("n2").counters.refutations >= 1


@pytest.mark.parametrize("reclaim_s", [20.0, 200.0], ids=["forgotten", "still-dead"])
def test_partition_longer_than_dead_timeout_heals_through_rejoin(reclaim_s: float) -> None:
    config = MembershipConfig(dead_node_reclaim_s=reclaim_s, rejoin_interval_s=5.0)
    net = converged(5, config)
    net.groups = [{"n0", "n1"}]  # {n0, n1} | {n2, n3, n4}; n0 is everyone's seed
    net.run_for(60.0)
    gone = {DEAD, None} if reclaim_s < 60.0 else {DEAD}
    expected = None if reclaim_s < 60.0 else DEAD
    assert net.states_of("n3", ["n0", "n1"]) == {expected}, gone
    assert net.states_of("n0", ["n2", "n3", "n4"]) == {expected}
    assert net.all_alive(["n0", "n1"]) and net.all_alive(["n2", "n3", "n4"])
    net.groups = []
    healed_at = net.now
    assert net.run_for(30.0, lambda: net.all_alive(IDS))
    assert net.now - healed_at <= config.rejoin_interval_s + 10.0
    net.run_for(30.0)
    assert net.all_alive(IDS)


@pytest.mark.parametrize("down_s", [0.0, 15.0], ids=["at-once", "after-declared-dead"])
def test_restarted_node_at_new_address_is_accepted(down_s: float) -> None:
    net = converged(6)
    net.crash("n3")
    net.run_for(down_s)
    if down_s:
        assert net.states_of("n3", ["n0", "n1", "n2", "n4"]) == {DEAD}
    net.add("n3", "n3@1", ["n0@0"])
    assert net.run_for(15.0, lambda: net.all_alive(IDS))
    assert net.by_id("n3").incarnation >= 1  # it outbid its old life
    switched_at = net.now
    net.run_for(30.0)
    assert net.all_alive(IDS)
    late = [d for d in net.deliveries if d[0] > switched_at]
    assert not [d for d in late if d[2] == "n3@0"], "the old address is still used"
    talkers = {src for _, src, dst in late if dst == "n3@1"}
    assert talkers == {"n0@0", "n1@0", "n2@0", "n4@0"}, talkers


def _starve(lifeguard: bool) -> Net:
    """n4's inbound messages wait 1.2 s in its backlog: longer than the whole 1 s probe interval,
    so every ack it awaits comes too late unless local health stretches its timeouts."""
    config = MembershipConfig(awareness_max_multiplier=8 if lifeguard else 1)
    net = converged(7, config)
    net.inbound_delay_s["n4"] = 1.2
    health_seen = [1]

    def watch() -> bool:
        health_seen.append(net.by_id("n4").local_health)
        return False

    net.run_for(120.0, watch)
    net.trace.append((net.now, "n4", "max-health", "", max(health_seen), ""))
    return net


def test_starved_node_raises_local_health_and_accuses_less() -> None:
    with_lifeguard, without = _starve(True), _starve(False)
    assert with_lifeguard.trace[-1][4] >= 2, "local health never rose"
    assert without.trace[-1][4] == 1
    starved_with = with_lifeguard.by_id("n4").counters
    starved_without = without.by_id("n4").counters
    assert starved_with.suspicions_raised * 3 < starved_without.suspicions_raised
    for net in (with_lifeguard, without):
        for node_id in IDS[:4]:
            assert not net.declared(node_id, DEAD), "a healthy peer was declared dead"


def _eventful_run(seed: int) -> tuple[list[TraceEntry], list[tuple[float, str, str]]]:
    net = cluster(seed)
    net.drop_share = 0.05
    net.run_until(10.0)
    net.crash("n1")
    net.run_for(20.0)
    net.add("n1", "n1@1", ["n0@0"])
    net.run_for(20.0)
    return net.trace, net.deliveries


def test_same_seed_replays_identically() -> None:
    first, second = _eventful_run(11), _eventful_run(11)
    assert first == second
    trace, _ = first
    assert any(e[3] == str(DEAD) for e in trace), "the run should contain a death"
    assert _eventful_run(12) != first


def test_graceful_leave_is_seen_by_all_and_not_refuted() -> None:
    net = converged(8)
    leaver = net.by_id("n2")
    for send in leaver.leave(net.now):
        net._send(leaver, send)
    others = ["n0", "n1", "n3", "n4"]
    assert net.run_for(5.0, lambda: net.states_of("n2", others) == {LEFT})
    net.run_for(10.0)
    own = leaver.member("n2")
    assert own is not None and own.state is LEFT
    assert leaver.counters.refutations == 0
    assert "n2" not in {m.node_id for m in net.by_id("n0").alive_members()}


# -- one node at a time: merge rules, probes, piggyback, bad input -----------------------------


def node(node_id: str = "a", seeds: list[str] | None = None, **config: float) -> Membership:
    cfg = MembershipConfig(**config)  # type: ignore[arg-type]
    return Membership(node_id, f"{node_id}@0", "dc0", cfg, np.random.default_rng(0), seeds or [])


def rec(
    node_id: str, state: MemberState = ALIVE, inc: int = 0, addr: str = "", reporter: str = ""
) -> MemberRecord:
    return MemberRecord(node_id, addr or f"{node_id}@0", "dc0", inc, state, reporter)


def run_ticks(m: Membership, start: float, end: float) -> list[Send]:
    """Tick ``m`` at each of its deadlines in ``[start, end]`` (no messages delivered)."""
    sends: list[Send] = []
    now = start
    while (deadline := m.next_deadline()) is not None and max(deadline, now) <= end:
        now = max(deadline, now)
        sends += m.tick(now)
        m.validate()
    return sends


def of_type(sends: list[Send], cls: type) -> list[Send]:
    return [s for s in sends if isinstance(s.msg, cls)]


def test_first_tick_is_immediate_and_joins_every_seed_until_answered() -> None:
    m = node("a", seeds=["s1@0", "s2@0", "a@0"])
    assert m.next_deadline() == 0.0
    first = of_type(m.tick(0.0), PushPull)
    assert [s.addr for s in first] == ["s1@0", "s2@0"]
    assert first[0].msg.members == [rec("a", reporter="a")] and not first[0].msg.is_reply
    retry = of_type(run_ticks(m, 0.0, 1.0), PushPull)
    assert [s.addr for s in retry] == ["s1@0", "s2@0"]
    m.receive(PushPull("s1", [rec("s1")], is_reply=True), "s1@0", 1.1)
    # No longer alone: the pending retry (at 2.0) goes to one seed, preferring one that is not
    # a known member (it may be across a partition); the next waits rejoin_interval_s.
    later = of_type(run_ticks(m, 1.1, 2.1), PushPull)
    assert [s.addr for s in later] == ["s2@0"]
    assert m.next_deadline() is not None
    assert of_type(run_ticks(m, 2.1, 4.0), PushPull) == []


def test_push_pull_request_is_answered_with_the_merged_table() -> None:
    m = node("a")
    [reply] = m.receive(PushPull("b", [rec("b"), rec("c")], is_reply=False), "b@0", 0.0)
    assert reply.addr == "b@0" and isinstance(reply.msg, PushPull) and reply.msg.is_reply
    assert {r.node_id for r in reply.msg.members} == {"a", "b", "c"}
    assert m.receive(PushPull("b", [rec("b")], is_reply=True), "b@0", 0.1) == []
    assert [(c.node_id, c.state) for c in m.drain_changes()] == [("b", ALIVE), ("c", ALIVE)]


def test_alive_with_higher_incarnation_wins_and_moves_the_address() -> None:
    m = node("a")
    m.merge([rec("b", inc=2)], 0.0)
    m.merge([rec("b", inc=2, addr="b@1"), rec("b", inc=1, addr="b@2")], 0.0)
    assert m.member("b") == rec("b", inc=2, reporter="b")  # same or lower incarnation: ignored
    m.merge([rec("b", inc=3, addr="b@1")], 0.0)
    assert m.member("b") == rec("b", inc=3, addr="b@1", reporter="b")
    assert [c.addr for c in m.drain_changes()] == ["b@0", "b@1"]


def test_suspect_dead_and_alive_follow_the_incarnation_rules() -> None:
    m = node("a")
    m.merge([rec("x", SUSPECT, reporter="c")], 0.0)
    assert m.member("x") is None  # news about unknown nodes is ignored
    m.merge([rec("b", inc=1)], 0.0)
    steps = [
        (rec("b", SUSPECT, inc=0, reporter="c"), ALIVE, 1),  # older: ignored
        (rec("b", SUSPECT, inc=1, reporter="c"), SUSPECT, 1),
        (rec("b", ALIVE, inc=1), SUSPECT, 1),  # must outbid the suspicion
        (rec("b", ALIVE, inc=2), ALIVE, 2),
        (rec("b", DEAD, inc=2, reporter="c"), DEAD, 2),
        (rec("b", SUSPECT, inc=2, reporter="c"), DEAD, 2),
        (rec("b", ALIVE, inc=2), DEAD, 2),
        (rec("b", ALIVE, inc=3), ALIVE, 3),
    ]
    for update, state, inc in steps:
        m.merge([update], 0.0)
        m.validate()
        record = m.member("b")
        assert record is not None and (record.state, record.incarnation) == (state, inc), update


def test_accusations_and_older_lives_of_itself_are_outbid() -> None:
    m = node("a")
    m.merge([rec("a", SUSPECT, inc=0, reporter="b")], 0.0)
    assert (m.incarnation, m.local_health) == (1, 2)
    m.merge([rec("a", DEAD, inc=3, reporter="b")], 0.0)
    assert (m.incarnation, m.local_health) == (4, 3)
    m.merge([rec("a", ALIVE, inc=4, addr="a@9")], 0.0)  # an older life elsewhere: outbid it
    assert (m.incarnation, m.local_health) == (5, 3)
    m.merge([rec("a", ALIVE, inc=5), rec("a", SUSPECT, inc=2)], 0.0)  # own record, stale news
    assert m.incarnation == 5 and m.counters.refutations == 3
    assert m.piggyback(16) == [rec("a", inc=5, reporter="a")]  # the refutation is queued
    assert m.drain_changes() == []  # own refutations are not changes of others


def test_gossip_cannot_claim_lives_a_node_cannot_have_had() -> None:
    """Unsigned gossip from an allow-listed key: "b is dead at the highest incarnation" and
    "b is alive far above its life" would evict b for good (it could never outbid them)."""
    m = node("a")
    m.merge([rec("b", inc=3)], 0.0)
    m.merge([rec("b", DEAD, inc=INCARNATION_MAX, reporter="rogue")], 0.0)
    record = m.member("b")
    assert record is not None and (record.state, record.incarnation) == (DEAD, 3)
    m.merge([rec("b", ALIVE, inc=4)], 0.0)  # b's refutation of the life known here wins
    record = m.member("b")
    assert record is not None and (record.state, record.incarnation) == (ALIVE, 4)
    m.merge([rec("b", ALIVE, inc=4 + INCARNATION_JUMP_MAX + 1, addr="rogue@0")], 0.0)
    m.merge([rec("x", ALIVE, inc=INCARNATION_JUMP_MAX + 1)], 0.0)  # an unknown node, too high
    assert m.member("b") == rec("b", inc=4, reporter="b") and m.member("x") is None
    assert m.counters.bad_input == 2
    m.merge([rec("b", ALIVE, inc=4 + INCARNATION_JUMP_MAX, addr="b@1")], 0.0)  # within bounds
    assert m.member("b") == rec("b", inc=4 + INCARNATION_JUMP_MAX, addr="b@1", reporter="b")


def test_a_member_it_does_not_admit_never_joins_the_table() -> None:
    """A driver admits the ids it holds a CURVE key for: a made-up member ("ghost") gossiped
    by an allow-listed key, alive or in a full-state exchange, stays out (and out of trees)."""
    cfg = MembershipConfig()
    m = Membership("a", "a@0", "dc0", cfg, np.random.default_rng(0), [], admit={"b"}.__contains__)
    m.merge([rec("ghost"), rec("b")], 0.0)
    m.receive(PushPull("rogue", [rec("ghost", inc=2)], is_reply=True), "rogue@0", 0.0)
    assert [r.node_id for r in m.members()] == ["a", "b"]
    assert m.counters.refused == 2 and m.counters.bad_input == 0
    m.merge([rec("b", SUSPECT, inc=0, reporter="rogue")], 0.0)  # known members: rules as before
    record = m.member("b")
    assert record is not None and record.state is SUSPECT


def test_a_forged_accusation_of_itself_is_refuted_from_its_own_life() -> None:
    m = node("a")
    m.merge([rec("a", DEAD, inc=INCARNATION_MAX, reporter="rogue")], 0.0)
    assert m.incarnation == 1 and m.counters.bad_input == 1  # outbids what peers keep of it
    m.merge([rec("a", DEAD, inc=1, reporter="b")], 0.0)  # a peer's clamped copy
    assert m.incarnation == 2


def test_other_layers_can_carry_the_piggyback() -> None:
    a, b = node("a"), node("b")
    a.merge([rec("c", SUSPECT)], 0.0)  # unknown: ignored
    a.merge([rec("c")], 0.0)
    b.merge(a.piggyback(16), 0.0)
    assert {r.node_id for r in b.alive_members()} == {"a", "b", "c"}
    for _ in range(retransmit_limit(4, 3)):
        a.piggyback(16)
    assert a.piggyback(16) == []  # every update was sent its retransmit limit


def test_probes_go_round_robin_over_a_shuffled_order() -> None:
    m = node("a")
    _with_peers(m, ["b", "c", "d", "e"])
    targets: list[str] = []
    now = 0.0
    while len(targets) < 12:
        now = max(m.next_deadline() or now, now)
        for ping in of_type(m.tick(now), Ping):  # every probe is answered at once
            targets.append(ping.msg.target_id)
            m.receive(Ack(ping.msg.seq, ping.msg.target_id, []), ping.addr, now)
    rounds = [targets[i : i + 4] for i in range(0, 12, 4)]
    assert all(sorted(r) == ["b", "c", "d", "e"] for r in rounds), rounds
    assert len({tuple(r) for r in rounds}) > 1, "the order should be reshuffled each round"
    assert now < 13.0 and m.local_health == 1


def test_dead_in_a_push_pull_only_raises_suspicion() -> None:
    m = node("a")
    m.merge([rec("b")], 0.0)
    m.receive(PushPull("c", [rec("c"), rec("b", DEAD, reporter="c")], is_reply=True), "c@0", 0.0)
    record = m.member("b")
    assert record is not None and record.state is SUSPECT


def _with_peers(m: Membership, peers: list[str]) -> None:
    m.merge([rec(p) for p in peers], 0.0)
    m.drain_changes()


def _first_ping(m: Membership) -> Send:
    for _ in range(100):
        pings = of_type(m.tick(m.next_deadline() or 0.0), Ping)
        if pings:
            [ping] = pings
            return ping
    raise AssertionError("no probe")


@pytest.mark.parametrize("nacks", [0, 2])
def test_unanswered_probe_goes_indirect_then_suspects(nacks: int) -> None:
    m = node("a")
    _with_peers(m, ["b", "c", "d"])
    m.tick(0.0)
    ping = _first_ping(m)
    target = ping.msg.target_id
    reqs = of_type(m.tick(m.next_deadline() or 0.0), PingReq)
    assert len(reqs) == 2 and {r.msg.target_addr for r in reqs} == {ping.addr}
    assert target not in {r.addr.split("@")[0] for r in reqs}
    for req in reqs[:nacks]:
        m.receive(Nack(req.msg.seq, req.addr.split("@")[0]), req.addr, m.next_deadline() or 0.0)
    m.tick(m.next_deadline() or 0.0)
    record = m.member(target)
    assert record is not None and record.state is SUSPECT and record.reporter == "a"
    assert m.local_health == 1 + 2 - nacks  # Lifeguard: missing nacks count against us
    assert m.counters.suspicions_raised == 1


def test_ack_in_time_ends_the_probe_and_improves_local_health() -> None:
    m = node("a")
    _with_peers(m, ["b"])
    m.merge([rec("a", SUSPECT, reporter="b")], 0.0)  # health 2
    m.tick(0.0)
    ping = _first_ping(m)
    m.receive(Ack(ping.msg.seq, "b", []), "b@0", m.next_deadline() or 0.0)
    assert m.local_health == 1
    assert of_type(run_ticks(m, 0.0, 1.0), PingReq) == []


def test_helper_forwards_the_ack_or_sends_a_nack() -> None:
    h = node("h")
    [ping] = h.receive(PingReq(7, "a", "t", "t@0", []), "a@0", 0.0)
    assert ping.addr == "t@0" and isinstance(ping.msg, Ping) and ping.msg.target_id == "t"
    [forwarded] = h.receive(Ack(ping.msg.seq, "t", []), "t@0", 0.1)
    assert forwarded.addr == "a@0" and isinstance(forwarded.msg, Ack) and forwarded.msg.seq == 7
    h.receive(PingReq(8, "a", "t", "t@0", []), "a@0", 1.0)
    nacks = of_type(run_ticks(h, 1.0, 1.5), Nack)
    assert [(n.addr, n.msg.seq) for n in nacks] == [("a@0", 8)]


def test_ping_for_another_node_at_a_reused_address_is_ignored() -> None:
    m = node("a")
    assert m.receive(Ping(1, "b", "someone-else", []), "b@0", 0.0) == []
    assert m.counters.misdirected == 1


def test_ack_leads_with_what_it_believes_of_the_prober() -> None:
    m = node("a")
    _with_peers(m, ["b", "c"])
    m.merge([rec("b", SUSPECT, reporter="c")], 0.0)
    [ack] = m.receive(Ping(1, "b", "a", []), "b@0", 0.0)
    assert ack.msg.updates[0] == rec("b", SUSPECT, reporter="c")
    [ack] = m.receive(Ping(2, "c", "a", []), "c@5", 0.0)  # c restarted elsewhere
    assert ack.msg.updates[0] == rec("c", reporter="c")


def test_bad_peer_input_is_counted_and_survived() -> None:
    m = node("a")
    bad_records: list[object] = [
        "not a record",
        MemberRecord("b", "b@0", "dc0", -1, ALIVE),
        MemberRecord("b", "b@0", "dc0", 0, "zombie"),  # type: ignore[arg-type]
        MemberRecord("", "b@0", "dc0", 0, ALIVE),
    ]
    inputs: list[object] = [
        "garbage",
        Ping(1, 5, "a", []),  # type: ignore[arg-type]
        Gossip("b", "not a list"),  # type: ignore[arg-type]
        Gossip("b", bad_records),  # type: ignore[arg-type]
    ]
    for msg in inputs:
        assert m.receive(msg, "b@0", 0.0) == []
        m.validate()
    assert m.counters.bad_input == 3 + len(bad_records)
    assert [r.node_id for r in m.members()] == ["a"]


MESSAGES = [
    Ping(1, "a", "b", [rec("c", SUSPECT, inc=3, reporter="a")]),
    Ack(2, "b", []),
    PingReq(3, "a", "b", "b@0", [rec("d", DEAD, inc=1, reporter="e")]),
    Nack(4, "c"),
    Gossip("a", [rec("x", LEFT, inc=9, reporter="x")]),
    PushPull("a", [rec("a", reporter="a"), rec("b", SUSPECT, reporter="a")], is_reply=True),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip_through_json_bodies(msg: object) -> None:
    kind, body = to_body(msg)  # type: ignore[arg-type]
    assert from_body(kind, json.loads(json.dumps(body))) == msg


GOOD_RECORD = {"node_id": "b", "addr": "b@0", "dc": "d", "incarnation": 0, "state": "alive"}


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("pong", {}),
        ("nack", {"seq": 1}),
        ("nack", {"seq": -1, "sender_id": "a"}),
        ("nack", {"seq": True, "sender_id": "a"}),
        ("nack", {"seq": 1, "sender_id": "a" * 300}),
        ("gossip", {"sender_id": "a", "updates": {}}),
        ("gossip", {"sender_id": "a", "updates": [GOOD_RECORD] * 5000}),
        ("gossip", {"sender_id": "a", "updates": [{**GOOD_RECORD, "state": "zombie"}]}),
        ("gossip", {"sender_id": "a", "updates": [{**GOOD_RECORD, "node_id": ""}]}),
        ("gossip", {"sender_id": "a", "updates": [{**GOOD_RECORD, "incarnation": 2**64}]}),
        ("push_pull", {"sender_id": "a", "members": [], "is_reply": 1}),
    ],
)
def test_malformed_bodies_are_refused(kind: str, body: dict[str, object]) -> None:
    with pytest.raises(MembershipDecodeError):
        from_body(kind, body)


def test_broadcast_queue_sends_each_update_a_limited_number_of_times_newest_first() -> None:
    queue = BroadcastQueue()
    a, b = rec("a"), rec("b")
    queue.push(a)
    queue.push(b)
    queue.push(a)  # replaces the queued update about a: now the newest
    assert queue.take(1, limit=2) == [a]
    assert queue.take(1, limit=2) == [b]  # the least sent go first
    assert queue.take(5, limit=2) == [a, b]
    assert len(queue) == 0
    assert [retransmit_limit(4, n) for n in (0, 5, 9, 10, 99, 100)] == [4, 4, 4, 8, 8, 12]


def test_suspicion_starts_long_and_shrinks_with_confirmations() -> None:
    suspicion = Suspicion(10.0, 4.0, 24.0, 2, "a")
    assert suspicion.deadline == 34.0
    assert not suspicion.confirm("a")  # the first accuser is not a confirmation
    assert suspicion.confirm("b")
    assert suspicion.deadline == pytest.approx(34.0 - 20.0 * math.log(2) / math.log(3))
    assert suspicion.confirm("c") and suspicion.deadline == 14.0
    assert not suspicion.confirm("d")
    assert Suspicion(10.0, 4.0, 24.0, 0, "a").deadline == 14.0
    assert [suspicion_min_s(4, n, 1.0) for n in (1, 5, 10, 100)] == [4.0, 4.0, 4.0, 8.0]


def _declared_dead_at(m: Membership) -> float:
    m.merge([rec("b")], 0.0)
    m.merge([rec("b", SUSPECT, reporter="c")], 0.0)
    now = 0.0
    while (deadline := m.next_deadline()) is not None:
        now = max(deadline, now)
        m.tick(now)
        if any(c.state is DEAD for c in m.drain_changes()):
            return now
    raise AssertionError("never declared dead")


def test_suspicion_timeout_is_stretched_by_local_health() -> None:
    healthy = node("a")
    assert _declared_dead_at(healthy) == 4.0  # two members: no confirmations expected
    unhealthy = node("a")
    unhealthy.merge([rec("a", SUSPECT, inc=0, reporter="x")], 0.0)
    unhealthy.merge([rec("a", SUSPECT, inc=1, reporter="x")], 0.0)
    assert unhealthy.local_health == 3
    assert _declared_dead_at(unhealthy) == 12.0


def test_dead_and_left_members_are_forgotten_after_the_reclaim_time() -> None:
    m = node("a", dead_node_reclaim_s=5.0)
    _with_peers(m, ["b", "c"])
    m.merge([rec("b", LEFT, inc=1, reporter="b"), rec("c", DEAD, reporter="a")], 1.0)
    assert [r.node_id for r in m.alive_members()] == ["a"]
    run_ticks(m, 1.0, 5.9)
    assert m.member("b") is not None
    run_ticks(m, 5.9, 6.1)
    assert m.member("b") is None and m.member("c") is None
    m.merge([rec("c", inc=0)], 7.0)  # forgotten: a new life at any incarnation is welcome
    assert m.member("c") == rec("c", reporter="c")


def test_member_table_is_bounded() -> None:
    m = node("a", members_max=2)
    m.merge([rec("b"), rec("c")], 0.0)
    assert [r.node_id for r in m.members()] == ["a", "b"]
    assert m.counters.dropped == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"probe_timeout_s": 1.0},
        {"probe_interval_s": 0.0},
        {"gossip_interval_s": -1.0},
        {"dead_node_reclaim_s": -1.0},
        {"suspicion_mult": 0},
        {"max_piggyback": 0},
        {"awareness_max_multiplier": 0},
        {"indirect_checks": -1},
    ],
)
def test_config_refuses_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        MembershipConfig(**bad)  # type: ignore[arg-type]
