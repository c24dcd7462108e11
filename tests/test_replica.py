"""The replica state machine (p2prec.core.replica) driven by hand on a virtual clock.

No sleeps and no sockets: ``Mesh`` holds real ``Replica``/``Publisher`` objects with real SWIM
membership, carries their ``Send`` effects through a FIFO queue (instant, lossless unless a test
drops something) and ticks every node on a fixed virtual-time step. ``Replica.validate()`` runs
after every ``handle`` and every ``tick`` (an autouse fixture wraps both). Tests that check one
node's reaction call ``handle`` directly on a joined mesh and inspect the returned effects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import pytest

from p2prec.core.deltalog import delta_key
from p2prec.core.effects import Effect, Incoming, Note, Persist, Route, Send
from p2prec.core.membership import Membership, MembershipConfig
from p2prec.core.publisher import Publisher, StaleHead
from p2prec.core.replica import Replica, ReplicaConfig
from p2prec.core.sync import digest_of, request_for
from p2prec.core.versions import VersionVector
from p2prec.model.keyhash import shard_of, table_salt
from p2prec.model.layout import StoreLayout
from p2prec.model.snapshot import parse_snapshot, snapshot_shard, strong_digest
from p2prec.model.store import ParamStore
from p2prec.sim.lineage import Lineage, generate, make_delta
from p2prec.wire.messages import (
    ControlRequest,
    ParamDelta,
    Rollback,
    ShardSnapshot,
    SyncDigest,
    SyncRequest,
    TableRows,
    Validated,
)

LAYOUT = StoreLayout(row_shards=8, dim=4, tables=("user", "item"))
N_SHARDS = LAYOUT.n_shards
PUBLISHER_ID = "trainer"
PUBLISHER_ADDR = "trainer@0"
STEP_S = 0.05  # virtual time between two rounds of ticks
JOIN_DEADLINE_S = 10.0
I64 = npt.NDArray[np.int64]
Drop = Callable[[str, Send], bool]  # (source addr, send) -> drop it?
R = TypeVar("R", bound=Replica)


def _keep(_src: str, _send: Send) -> bool:
    return False


@pytest.fixture(autouse=True)
def _validate_after_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``handle`` and ``tick`` of every replica (publisher included) is followed by
    ``Replica.validate()``, whoever calls it."""
    handle, tick = Replica.handle, Replica.tick

    def checked_handle(self: Replica, event: Incoming, now: float) -> list[Effect]:
        effects = handle(self, event, now)
        self.validate()
        return effects

    def checked_tick(self: Replica, now: float) -> list[Effect]:
        effects = tick(self, now)
        self.validate()
        return effects

    monkeypatch.setattr(Replica, "handle", checked_handle)
    monkeypatch.setattr(Replica, "tick", checked_tick)


# -- the in-test mesh ------------------------------------------------------------------------------


class Mesh:
    """A publisher and replicas of the real core on an instant in-test network."""

    def __init__(
        self,
        dcs: Mapping[str, int],
        config: ReplicaConfig,
        seed: int = 0,
        configs: Mapping[str, ReplicaConfig] | None = None,
        stores: Mapping[str, ParamStore] | None = None,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.now = 0.0
        self.by_addr: dict[str, Replica] = {}
        self.queue: deque[tuple[str, Send]] = deque()
        self.sent: list[tuple[float, str, Send]] = []  # every Send carried: time, source, send
        self.notes: list[tuple[str, Note]] = []  # every Note: node id, note
        self.drop: Drop = _keep
        configs, stores = configs or {}, stores or {}
        self.publisher = self._make(
            Publisher, PUBLISHER_ID, "dc-trainer", PUBLISHER_ADDR, config, ParamStore(LAYOUT)
        )
        for dc, count in dcs.items():
            for i in range(count):
                node_id = f"{dc}.{i}"
                store = stores.get(node_id, ParamStore(LAYOUT))
                self._make(
                    Replica, node_id, dc, f"{node_id}@0", configs.get(node_id, config), store
                )

    def _make(
        self,
        kind: type[R],
        node_id: str,
        dc: str,
        addr: str,
        config: ReplicaConfig,
        store: ParamStore,
    ) -> R:
        seeds = [PUBLISHER_ADDR] if addr != PUBLISHER_ADDR else []
        member_rng = np.random.default_rng(int(self.rng.integers(2**63)))
        membership = Membership(node_id, addr, dc, MembershipConfig(), member_rng, seeds)
        rng = np.random.default_rng(int(self.rng.integers(2**63)))
        replica = kind(node_id, addr, dc, store, membership, config, rng)
        self.by_addr[addr] = replica
        return replica

    # -- lookups ---------------------------------------------------------------------------------

    def node(self, node_id: str) -> Replica:
        (found,) = [r for r in self.by_addr.values() if r.node_id == node_id]
        return found

    @property
    def replicas(self) -> list[Replica]:
        return [r for r in self.by_addr.values() if r is not self.publisher]

    def dc_of(self, addr: str) -> str:
        return self.by_addr[addr].dc

    def sent_by(self, node: Replica, kind: type) -> list[tuple[float, Send]]:
        return [(t, s) for t, src, s in self.sent if src == node.addr and isinstance(s.msg, kind)]

    # -- moving messages -------------------------------------------------------------------------

    def carry(self, src: Replica, effects: Iterable[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Note):
                self.notes.append((src.node_id, effect))
            if isinstance(effect, Send) and not self.drop(src.addr, effect):
                self.sent.append((self.now, src.addr, effect))
                self.queue.append((src.addr, effect))

    def flush(self) -> None:
        while self.queue:
            src, send = self.queue.popleft()
            dst = self.by_addr.get(send.addr)
            if dst is not None:
                effects = dst.handle(Incoming(src, send.msg, send.raw, send.route), self.now)
                self.carry(dst, effects)

    def tick_all(self) -> None:
        for replica in list(self.by_addr.values()):
            deadline = replica.next_deadline()
            if deadline is not None and deadline <= self.now:
                effects = replica.tick(self.now)
                self.carry(replica, effects)
                self.flush()

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Tick rounds up to ``end`` (virtual seconds); True as soon as ``stop()`` holds."""
        while True:
            self.flush()
            if stop is not None and stop():
                return True
            if self.now + STEP_S > end + 1e-9:
                return stop() if stop is not None else False
            self.now += STEP_S
            self.tick_all()

    def joined(self) -> bool:
        everyone = {r.node_id for r in self.by_addr.values()}
        return all(
            {m.node_id for m in r.membership.alive_members()} == everyone
            and set(r._members) == everyone - {r.node_id}
            for r in self.by_addr.values()
        )

    def join(self) -> Mesh:
        assert self.run_until(self.now + JOIN_DEADLINE_S, self.joined), "members did not join"
        return self

    # -- the publisher ---------------------------------------------------------------------------

    def publish(self, *deltas: ParamDelta) -> None:
        for delta in deltas:
            self.carry(self.publisher, self.publisher.publish(delta, raw=("raw", delta)))
            self.publisher.validate()
            self.flush()

    def validate_head(self) -> Validated:
        msg = validated_of(self.publisher.store, self.publisher.fencing.epoch)
        self.carry(self.publisher, self.publisher.publish_validated(msg, raw=("raw", msg)))
        self.flush()
        return msg

    def roll_back(self, to: VersionVector) -> Rollback:
        msg = Rollback(to, self.publisher.fencing.epoch + 1)
        self.carry(self.publisher, self.publisher.publish_rollback(msg, raw=("raw", msg)))
        self.flush()
        self.validate_head()  # the protocol: a validation of the new epoch follows a rollback
        return msg

    def give(self, node: Replica, msg: object, route: Route = Route.REPAIR) -> list[Effect]:
        """Hand ``msg`` to ``node`` as if from the publisher (effects returned, not carried)."""
        return node.handle(Incoming(PUBLISHER_ADDR, msg, ("raw", msg), route), self.now)


# -- helpers ---------------------------------------------------------------------------------------


def lineage(steps: int = 8, seed: int = 1) -> Lineage:
    return generate(LAYOUT, seed, steps, rows_per_step=4, key_space=60, dense_every=3)


def vec(state: I64) -> VersionVector:
    return VersionVector(state)


def sends(effects: Iterable[Effect], kind: type | None = None) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and (kind is None or isinstance(e.msg, kind))]


def notes(effects: Iterable[Effect], event: str) -> list[Note]:
    return [e for e in effects if isinstance(e, Note) and e.event == event]


def root_after(deltas: Sequence[ParamDelta]) -> bytes:
    store = ParamStore(LAYOUT)
    for delta in deltas:
        store.apply(delta)
    return store.root


def validated_of(store: ParamStore, epoch: int) -> Validated:
    """A Validated of the store's current vector with the digests of its shard snapshots."""
    digests = b"".join(strong_digest(snapshot_shard(store, s)) for s in range(N_SHARDS))
    return Validated(store.vector, epoch, 0, digests)


def keys_in_shard(table: str, shard: int, count: int) -> I64:
    candidates = np.arange(-1000, 1000, dtype=np.int64)
    placed = shard_of(table_salt(table), candidates, LAYOUT.row_shards)
    chosen: I64 = candidates[placed == shard][:count]
    return chosen


def shard_chain(shard: int, length: int, seed: int = 5) -> list[ParamDelta]:
    """``length`` successive deltas that each step only ``shard`` (epoch 1)."""
    rng = np.random.default_rng(seed)
    vector = np.zeros(N_SHARDS, dtype=np.int64)
    keys = {"user": keys_in_shard("user", shard, 3)}
    chain = []
    for _ in range(length):
        delta = make_delta(LAYOUT, vector, keys, False, rng, 1)
        assert delta.shards == (shard,)
        vector[shard] = delta.versions[0]
        chain.append(delta)
    return chain


def single_dc(count: int, gap_buffer_max: int = 256) -> Mesh:
    config = ReplicaConfig(fanout=2, shard_groups=1, gap_buffer_max=gap_buffer_max)
    return Mesh({"dc0": count}, config).join()


# -- joining ---------------------------------------------------------------------------------------


def test_members_join_through_the_publisher_seed_and_build_trees() -> None:
    mesh = Mesh({"dc0": 3, "dc1": 2}, ReplicaConfig(fanout=2, shard_groups=2)).join()
    for replica in mesh.by_addr.values():
        assert replica.tree.dcs == ("dc0", "dc1")  # the publisher is never part of a tree
        assert PUBLISHER_ID not in {m.node_id for m in replica.tree.members}
        assert len(replica.tree.members) == 5


# -- the tree --------------------------------------------------------------------------------------


def test_tree_delta_is_applied_and_relayed_to_the_children_exactly_once() -> None:
    mesh = Mesh({"dc0": 3, "dc1": 2}, ReplicaConfig(fanout=2, shard_groups=1)).join()
    d0 = lineage().deltas[0]
    out = mesh.publisher.publish(d0, raw=b"frames")
    roots = mesh.publisher.tree.roots(0)
    assert {s.addr for s in sends(out)} == {f"{roots['dc0']}@0", f"{roots['dc1']}@0"}
    assert all(s.route is Route.TREE and s.raw == b"frames" and s.msg is d0 for s in sends(out))

    root = mesh.node(roots["dc0"])
    children = root.tree.children(root.node_id, 0)
    assert len(children) == 2
    effects = root.handle(Incoming(PUBLISHER_ADDR, d0, b"frames", Route.TREE), mesh.now)
    relayed = sends(effects)
    assert sorted(s.addr for s in relayed) == sorted(f"{c}@0" for c in children)
    assert all(s.msg is d0 and s.raw == b"frames" and s.route is Route.TREE for s in relayed)
    assert root.counters.applied == 1
    assert root.store.vector == VersionVector(lineage().states[1].vector)
    assert len([e for e in effects if isinstance(e, Persist)]) == 1

    again = root.handle(Incoming(PUBLISHER_ADDR, d0, b"frames", Route.TREE), mesh.now)
    assert sends(again) == [] and not any(isinstance(e, Persist) for e in again)
    assert root.counters.applied == 1 and root.counters.duplicates == 1

    leaf = mesh.node(children[0])
    leaf_effects = leaf.handle(Incoming(root.addr, d0, b"frames", Route.TREE), mesh.now)
    assert sends(leaf_effects) == []  # a leaf has no children
    assert leaf.counters.applied == 1


def test_forward_sends_to_the_children_before_the_apply_and_handle_does_not_resend() -> None:
    mesh = Mesh({"dc0": 3}, ReplicaConfig(fanout=2, shard_groups=1)).join()
    d0 = lineage().deltas[0]
    root = mesh.node(mesh.publisher.tree.roots(0)["dc0"])
    children = root.tree.children(root.node_id, 0)
    event = Incoming(PUBLISHER_ADDR, d0, b"frames", Route.TREE)
    forwarded = root.forward(event)
    assert sorted(s.addr for s in sends(forwarded)) == sorted(f"{c}@0" for c in children)
    assert root.counters.applied == 0  # nothing applied yet: the children get it first
    effects = root.handle(event, mesh.now)
    assert sends(effects) == [] and root.counters.applied == 1
    assert root.forward(event) == []  # seen: never twice
    repair = Incoming(PUBLISHER_ADDR, lineage().deltas[1], b"frames", Route.REPAIR)
    assert root.forward(repair) == []  # repairs are not relayed


def test_forward_drops_a_fenced_delta() -> None:
    mesh = Mesh({"dc0": 3}, ReplicaConfig(fanout=2, shard_groups=1)).join()
    line = lineage()
    root = mesh.node(mesh.publisher.tree.roots(0)["dc0"])
    for delta in line.deltas[:2]:
        mesh.give(root, delta)
    mesh.give(root, Rollback(vec(line.states[1].vector), 2))
    stale = Incoming(PUBLISHER_ADDR, line.deltas[2], b"frames", Route.TREE)
    assert root.forward(stale) == []  # epoch 1 above the rollback's ``to``: fenced
    # Not for another reason: an interior node that has not seen the delta would relay it.
    assert len(root.tree.children(root.node_id, 0)) == 2
    assert delta_key(line.deltas[2]) not in root._seen


def test_delivered_through_the_mesh_every_node_applies_each_delta_once() -> None:
    mesh = Mesh({"dc0": 4, "dc1": 3}, ReplicaConfig(fanout=2, shard_groups=4)).join()
    line = lineage(6)
    before = len(mesh.sent)
    mesh.publish(*line.deltas)
    deltas_sent = [s for _, _, s in mesh.sent[before:] if isinstance(s.msg, ParamDelta)]
    # Each delta reaches each of the 7 nodes exactly once: 2 copies from the publisher (one per
    # datacenter), 5 relayed inside the datacenters.
    assert len(deltas_sent) == 7 * len(line.deltas)
    for replica in mesh.replicas:
        assert replica.counters.applied == len(line.deltas)
        assert replica.counters.duplicates == 0
        assert replica.store.root == mesh.publisher.store.root


def test_repair_delta_is_applied_but_never_relayed() -> None:
    mesh = single_dc(3)
    d0 = lineage().deltas[0]
    root = mesh.node(mesh.publisher.tree.roots(0)["dc0"])
    assert root.tree.children(root.node_id, 0)  # it would relay a tree delta
    effects = mesh.give(root, d0, Route.REPAIR)
    assert sends(effects) == []
    assert root.counters.repaired == 1 and root.counters.applied == 0
    assert root.store.root == root_after([d0])


# -- fencing ---------------------------------------------------------------------------------------


def test_rollback_fences_old_epoch_above_to_and_admits_it_at_or_below() -> None:
    mesh = single_dc(2)
    line = lineage()
    ahead, behind = mesh.replicas
    for delta in line.deltas[:4]:
        mesh.give(ahead, delta)
    mesh.give(behind, line.deltas[0])
    to = vec(line.states[2].vector)
    rollback = Rollback(to, 2)

    for replica in (ahead, behind):
        effects = mesh.give(replica, rollback)
        assert replica.fencing.epoch == 2 and replica.counters.rollbacks == 1
        assert len(notes(effects, "rolled_back")) == 1
    assert ahead.store.vector == to and ahead.store.root == root_after(line.deltas[:2])
    assert behind.store.vector == vec(line.states[1].vector)  # below ``to``: nothing undone

    # Epoch 1 above ``to``: refused, not relayed, store unchanged.
    root, vector = ahead.store.root, ahead.store.vector
    fenced = ahead.handle(Incoming(PUBLISHER_ADDR, line.deltas[2], None, Route.TREE), mesh.now)
    assert ahead.counters.fenced == 1
    assert sends(fenced) == [] and notes(fenced, "delta_fenced")
    assert ahead.store.root == root and ahead.store.vector == vector

    # Epoch 1 at ``to``: admitted.
    mesh.give(behind, line.deltas[1])
    assert behind.counters.fenced == 0
    assert behind.store.vector == to and behind.store.root == root_after(line.deltas[:2])
    mesh.give(behind, line.deltas[2])
    assert behind.counters.fenced == 1 and behind.store.vector == to


def test_future_epoch_is_held_asks_for_control_and_rollbacks_apply_in_order() -> None:
    mesh = single_dc(1)
    (node,) = mesh.replicas
    line = lineage()
    for delta in line.deltas[:4]:
        mesh.give(node, delta)
    to = vec(line.states[2].vector)
    rb2, rb3 = Rollback(to, 2), Rollback(to, 3)
    rng = np.random.default_rng(3)
    e3 = make_delta(LAYOUT, to.packed, {"user": np.array([1, 2, 3])}, True, rng, 3)
    start_root, start_vector = node.store.root, node.store.vector
    repaired = node.counters.repaired

    effects = node.handle(Incoming("peer@0", e3, e3, Route.REPAIR), mesh.now)
    asks = sends(effects, ControlRequest)
    assert [(s.addr, s.msg.sender, s.msg.epoch) for s in asks] == [("peer@0", node.node_id, 1)]
    assert node.store.root == start_root and node.counters.repaired == repaired

    effects = node.handle(Incoming("peer@0", rb3, rb3, Route.REPAIR), mesh.now)  # skips epoch 2
    assert sends(effects, ControlRequest) == []  # asked that peer a moment ago: throttled
    later = mesh.now + node.config.request_timeout_s
    effects = node.handle(Incoming("peer@0", rb3, rb3, Route.REPAIR), later)
    assert [s.addr for s in sends(effects, ControlRequest)] == ["peer@0"]
    assert node.fencing.epoch == 1 and node.counters.rollbacks == 0
    assert node.store.vector == start_vector

    mesh.give(node, rb2)
    assert node.fencing.epoch == 2 and node.store.vector == to  # e3 still held: epoch 3 unseen
    mesh.give(node, rb3)
    assert node.fencing.epoch == 3 and node.counters.rollbacks == 2
    assert node.counters.repaired == repaired + 1  # the held epoch-3 delta went in
    assert node.store.root == root_after([*line.deltas[:2], e3])
    assert node.store.vector == to.replace(list(e3.shards), list(e3.versions))

    assert mesh.give(node, rb2) == []  # an old rollback again: nothing happens
    assert node.fencing.epoch == 3 and node.counters.rollbacks == 2


def test_rollback_restores_exactly_the_publishers_root_at_to() -> None:
    mesh = Mesh({"dc0": 3, "dc1": 2}, ReplicaConfig(fanout=2, shard_groups=4)).join()
    line = lineage(8)
    mesh.publish(*line.deltas[:3])
    mesh.validate_head()
    to, root_at_to = mesh.publisher.store.vector, mesh.publisher.store.root
    mesh.publish(*line.deltas[3:])
    for replica in mesh.replicas:
        assert replica.store.vector == vec(line.states[8].vector)
        assert replica.store.root != root_at_to
    mesh.roll_back(to)
    assert mesh.publisher.store.root == root_at_to
    for replica in mesh.replicas:
        assert replica.fencing.epoch == 2 and replica.counters.rollbacks == 1
        assert replica.store.vector == to
        assert replica.store.root == root_at_to
        assert replica.store.watermark == to
    # Catch-up served from now on holds nothing of the undone steps.
    kept = [delta_key(d) for d in line.deltas[:3]]
    for replica in mesh.by_addr.values():
        logged = replica.log.since(list(range(N_SHARDS)), [0] * N_SHARDS)
        assert [delta_key(e.delta) for e in logged] == kept
        assert (replica.log.floor <= to.packed).all()
    asker = ParamStore(LAYOUT)
    request = request_for("late", asker, range(N_SHARDS))
    answer = sends(mesh.publisher.handle(Incoming("late@0", request), mesh.now), ParamDelta)
    assert [delta_key(s.msg) for s in answer] == kept


def test_small_undo_budget_empties_the_lost_shards_then_catches_up() -> None:
    small = ParamStore(LAYOUT, undo_rows_max=6)
    config = ReplicaConfig(fanout=2, shard_groups=1)
    mesh = Mesh({"dc0": 2}, config, stores={"dc0.0": small}).join()
    node = mesh.node("dc0.0")
    line = lineage(8)
    mesh.publish(*line.deltas[:2])
    mesh.validate_head()
    to = mesh.publisher.store.vector
    mesh.publish(*line.deltas[2:])
    lost = small.can_roll_back(to)
    assert lost  # the scenario needs shards whose undo was released by the budget

    mesh.roll_back(to)
    (note,) = [n for nid, n in mesh.notes if nid == node.node_id and n.event == "rolled_back"]
    assert note.fields["shards_refetched"] == lost
    assert node.fencing.epoch == 2
    packed = small.vector.packed
    for shard in range(N_SHARDS):
        if shard in lost:
            assert packed[shard] == 0
            if shard == LAYOUT.dense_shard:
                assert small.dense_values() == {}
            else:
                assert all(len(rows) == 0 for rows in small.shard_rows(shard).values())
        else:
            assert packed[shard] == to.packed[shard]
    # No row is left above ``to`` (fenced rows), and the digests match the content.
    for table in LAYOUT.tables:
        keys, slots = small.tables[table].live_slots()
        versions = small.tables[table].slot_version[slots]
        assert (versions <= to.packed[shard_of(table_salt(table), keys, LAYOUT.row_shards)]).all()

    publisher = mesh.publisher
    assert mesh.run_until(mesh.now + 10.0, lambda: small.root == publisher.store.root)
    assert small.vector == publisher.store.vector
    assert node.counters.pulls >= 1 and node.counters.repaired >= 1


# -- anti-entropy ----------------------------------------------------------------------------------


def _digest(node: Replica, reply: bool = False) -> SyncDigest:
    return digest_of(node.node_id, node.store, node.fencing.epoch, is_reply=reply)


def test_lagging_shards_are_pulled_after_the_grace_period_from_the_same_dc() -> None:
    config = ReplicaConfig(fanout=2, shard_groups=1, repair_grace_s=0.5, request_timeout_s=0.1)
    mesh = Mesh({"dc0": 2, "dc1": 1}, config).join()
    lagging, local, remote = mesh.node("dc0.0"), mesh.node("dc0.1"), mesh.node("dc1.0")
    line = lineage(3)
    for delta in line.deltas:
        mesh.give(local, delta)
        mesh.give(remote, delta)
    behind = [int(s) for s in np.flatnonzero(line.states[3].vector)]

    t0 = mesh.now
    heard = lagging.handle(Incoming(remote.addr, _digest(remote), None, Route.MESH), t0)
    heard += lagging.handle(Incoming(local.addr, _digest(local), None, Route.MESH), t0)
    assert sends(heard, SyncRequest) == []  # not before the grace period: it may be in flight
    # A later digest showing the same lag does not restart the grace period.
    heard = lagging.handle(Incoming(local.addr, _digest(local), None, Route.MESH), t0 + 0.3)
    assert sends(heard, SyncRequest) == []
    assert sends(lagging.tick(t0 + 0.45), SyncRequest) == []
    assert lagging.next_deadline() == pytest.approx(t0 + 0.5)

    now = t0 + 0.5
    pulls = sends(lagging.tick(now), SyncRequest)
    assert [p.addr for p in pulls] == [local.addr]
    request = pulls[0].msg
    assert request.shards == tuple(behind) and request.since == (0,) * len(behind)
    assert request.sender == lagging.node_id and not request.snapshot_only
    assert sends(lagging.tick(now + 0.05), SyncRequest) == []  # in flight: not yet again
    # Unanswered pulls are repeated after the request timeout, always to the same-DC holder
    # (the choice among holders is random: repeating rules out a lucky draw).
    for _ in range(8):
        now += 0.1
        again = sends(lagging.tick(now), SyncRequest)
        assert [p.addr for p in again] == [local.addr]
    assert lagging.counters.pulls == 9

    answer = local.handle(Incoming(lagging.addr, request, None, Route.MESH), mesh.now)
    assert {s.addr for s in sends(answer)} == {lagging.addr}
    assert all(s.route is Route.REPAIR for s in sends(answer, ParamDelta))
    assert sends(answer, ShardSnapshot) == []  # its log reaches back: original deltas
    for send in sends(answer):
        lagging.handle(Incoming(local.addr, send.msg, send.raw, send.route), mesh.now)
    assert lagging.store.root == local.store.root == root_after(line.deltas)
    assert lagging.counters.repaired == len(line.deltas)


def test_one_pull_asks_one_peer_for_every_shard_it_holds() -> None:
    """A signed delta is not split: asked for some of its shards, a peer sends all of it. So
    the shards behind go to one holder, not spread over several (each would send it again)."""
    config = ReplicaConfig(fanout=2, shard_groups=1, repair_grace_s=0.5)
    mesh = Mesh({"dc0": 4}, config).join()
    lagging, *holders = (mesh.node(f"dc0.{i}") for i in range(4))
    line = lineage(3)
    for holder in holders:
        for delta in line.deltas:
            mesh.give(holder, delta)
    behind = [int(s) for s in np.flatnonzero(line.states[3].vector)]
    assert len(behind) > 4  # enough shards that a per-shard draw would spread them
    t0 = mesh.now
    for holder in holders:
        lagging.handle(Incoming(holder.addr, _digest(holder), None, Route.MESH), t0)
    pulls = sends(lagging.tick(t0 + 0.5), SyncRequest)
    assert len(pulls) == 1 and pulls[0].addr in {h.addr for h in holders}
    assert pulls[0].msg.shards == tuple(behind)


def test_lagging_shards_are_pulled_across_dcs_when_no_local_peer_has_them() -> None:
    config = ReplicaConfig(fanout=2, shard_groups=1, repair_grace_s=0.5, request_timeout_s=0.1)
    mesh = Mesh({"dc0": 2, "dc1": 1}, config).join()
    lagging, local, remote = mesh.node("dc0.0"), mesh.node("dc0.1"), mesh.node("dc1.0")
    line = lineage(3)
    for delta in line.deltas:
        mesh.give(remote, delta)
    t0 = mesh.now
    lagging.handle(Incoming(local.addr, _digest(local), None, Route.MESH), t0)
    lagging.handle(Incoming(remote.addr, _digest(remote), None, Route.MESH), t0)
    now = t0 + 0.5
    for _ in range(8):
        pulls = sends(lagging.tick(now), SyncRequest)
        assert [p.addr for p in pulls] == [remote.addr]
        now += 0.1


def _drop_tree_deltas_to(addrs: set[str]) -> Drop:
    def drop(_src: str, send: Send) -> bool:
        return send.addr in addrs and isinstance(send.msg, ParamDelta) and send.route is Route.TREE

    return drop


def test_node_that_missed_deltas_catches_up_from_its_dc_peer() -> None:
    mesh = Mesh({"dc0": 2, "dc1": 1}, ReplicaConfig(fanout=2, shard_groups=1)).join()
    root_id = mesh.publisher.tree.roots(0)["dc0"]
    (leaf_id,) = mesh.node(root_id).tree.children(root_id, 0)
    leaf, dc_peer = mesh.node(leaf_id), mesh.node(root_id)
    mesh.drop = _drop_tree_deltas_to({leaf.addr})
    line = lineage(6)
    published_at = mesh.now
    mesh.publish(*line.deltas)
    assert dc_peer.store.root == mesh.publisher.store.root
    assert leaf.store.vector == VersionVector.zeros(N_SHARDS)

    publisher = mesh.publisher
    assert mesh.run_until(mesh.now + 10.0, lambda: leaf.store.root == publisher.store.root)
    assert leaf.store.vector == publisher.store.vector
    assert leaf.counters.applied == 0 and leaf.counters.repaired >= 1
    pulls = mesh.sent_by(leaf, SyncRequest)
    assert pulls and {s.addr for _, s in pulls} == {dc_peer.addr}
    assert min(t for t, _ in pulls) >= published_at + leaf.config.repair_grace_s


def test_a_datacenter_that_missed_deltas_catches_up_across_the_wan() -> None:
    mesh = Mesh({"dc0": 2, "dc1": 1}, ReplicaConfig(fanout=2, shard_groups=1)).join()
    dc0 = [r for r in mesh.replicas if r.dc == "dc0"]
    mesh.drop = _drop_tree_deltas_to({r.addr for r in dc0})
    published_at = mesh.now
    mesh.publish(*lineage(6).deltas)
    assert all(r.store.vector == VersionVector.zeros(N_SHARDS) for r in dc0)

    publisher = mesh.publisher
    assert mesh.run_until(
        mesh.now + 10.0, lambda: all(r.store.root == publisher.store.root for r in dc0)
    )
    first_time, first = min(
        ((t, s) for r in dc0 for t, s in mesh.sent_by(r, SyncRequest)), key=lambda p: p[0]
    )
    assert mesh.dc_of(first.addr) != "dc0", "the first pull had no same-DC holder to go to"
    assert first_time >= published_at + dc0[0].config.repair_grace_s


# -- snapshots -------------------------------------------------------------------------------------


class SnapCase(NamedTuple):
    mesh: Mesh
    lagging: Replica
    server: Replica
    validated: Validated
    deltas: list[ParamDelta]
    root_at_watermark: bytes


def _snapshot_case() -> SnapCase:
    """``server`` (a delta log too small to hold anything) holds 3 validated steps and 2 more;
    ``lagging`` missed everything."""
    config = ReplicaConfig(fanout=2, shard_groups=1)
    tiny = replace(config, delta_log_bytes_max=1)
    mesh = Mesh({"dc0": 2}, config, configs={"dc0.1": tiny}).join()
    lagging, server = mesh.node("dc0.0"), mesh.node("dc0.1")
    mesh.drop = lambda _src, send: send.addr == lagging.addr and send.route is Route.TREE
    deltas = lineage(5).deltas
    mesh.publish(*deltas[:3])
    validated = mesh.validate_head()
    root_at_watermark = mesh.publisher.store.root
    mesh.publish(*deltas[3:])
    mesh.drop = _keep
    assert server.store.root == mesh.publisher.store.root and len(server.log) == 0
    assert server.store.watermark == validated.vector != server.store.vector
    assert lagging.store.vector == VersionVector.zeros(N_SHARDS)
    assert lagging.fencing.validated is None
    return SnapCase(mesh, lagging, server, validated, deltas, root_at_watermark)


def _ask_everything(case: SnapCase, since: ParamStore | None = None) -> list[Send]:
    store = since if since is not None else case.lagging.store
    request = request_for(case.lagging.node_id, store, range(N_SHARDS))
    incoming = Incoming(case.lagging.addr, request, None, Route.MESH)
    return sends(case.server.handle(incoming, case.mesh.now))


def _deliver(case: SnapCase, out: Iterable[Send]) -> list[Effect]:
    effects: list[Effect] = []
    for send in out:
        incoming = Incoming(case.server.addr, send.msg, send.raw, send.route)
        effects += case.lagging.handle(incoming, case.mesh.now)
    return effects


def test_short_delta_log_answers_with_validated_and_snapshots_at_the_watermark() -> None:
    case = _snapshot_case()
    lagging, validated = case.lagging, case.validated
    out = _ask_everything(case)
    assert {s.addr for s in out} == {lagging.addr}
    assert isinstance(out[0].msg, Validated) and out[0].raw == ("raw", validated)
    assert out[0].route is Route.REPAIR
    snaps = [s.msg for s in out[1:]]
    assert all(isinstance(s, ShardSnapshot) for s in snaps)
    held = [int(s) for s in np.flatnonzero(validated.vector.packed)]
    assert [s.shard for s in snaps] == held
    assert [s.version for s in snaps] == [int(validated.vector.packed[s]) for s in held]
    assert len(out) == 1 + len(held)  # no deltas: the log holds none

    effects = _deliver(case, out)
    assert lagging.counters.rejected == 0 and lagging.counters.repaired == len(held)
    # Each restored snapshot is logged (after the Validated that verifies it): a crash then
    # replays it under the deltas logged later, not those deltas over the older disk state.
    persisted = [e for e in effects if isinstance(e, Persist)]
    assert len(persisted) == 1 + len(held)
    assert lagging.store.vector == validated.vector
    assert lagging.store.root == case.root_at_watermark
    assert (lagging.log.floor == validated.vector.packed).all()
    # The rest comes as deltas from a peer whose log holds them.
    _deliver(case, [Send(lagging.addr, d, None, Route.REPAIR) for d in case.deltas[3:]])
    assert lagging.store.root == case.mesh.publisher.store.root


def _forged(snap: ShardSnapshot) -> bytes:
    """A well-formed snapshot of the same shard and version with one row changed: it passes the
    snapshot's own digest check, so only the trainer-signed BLAKE3 can catch it."""
    parsed = parse_snapshot(LAYOUT, snap.data)
    tables = {}
    for name, rows in parsed.tables.items():
        values = np.array(rows.rows, copy=True)
        if len(rows):
            values[0, 0] += 1.0
        tables[name] = TableRows(rows.keys.copy(), rows.versions.copy(), values)
    store = ParamStore(LAYOUT)
    store.replace_shard(snap.shard, snap.version, tables, {})
    return snapshot_shard(store, snap.shard)


@pytest.mark.parametrize(
    "attack", ["flipped_byte", "forged_rows", "other_version", "no_validated", "no_digests"]
)
def test_snapshot_without_a_matching_signed_digest_is_rejected(attack: str) -> None:
    case = _snapshot_case()
    lagging, validated = case.lagging, case.validated
    snap = next(
        s.msg
        for s in _ask_everything(case)
        if isinstance(s.msg, ShardSnapshot) and s.msg.shard != LAYOUT.dense_shard
    )
    data: bytes | memoryview = snap.data
    if attack == "flipped_byte":
        raw = bytearray(snap.data)
        raw[-1] ^= 0x40
        data = bytes(raw)
    elif attack == "forged_rows":
        data = _forged(snap)
        assert parse_snapshot(LAYOUT, data).version == snap.version  # well-formed
    version = snap.version + 1 if attack == "other_version" else snap.version
    if attack == "no_digests":
        case.mesh.give(lagging, replace(validated, shard_digests=b""))
        assert lagging.fencing.validated is not None
    elif attack != "no_validated":
        case.mesh.give(lagging, validated)
    root, vector = lagging.store.root, lagging.store.vector

    effects = _deliver(case, [Send(lagging.addr, ShardSnapshot(snap.shard, version, data))])
    assert lagging.counters.rejected == 1 and lagging.counters.repaired == 0
    assert notes(effects, "snapshot_rejected")
    assert lagging.store.root == root and lagging.store.vector == vector
    if attack == "no_digests":
        return
    # The genuine snapshot is taken once the genuine signed Validated is held.
    case.mesh.give(lagging, validated)
    _deliver(case, [Send(lagging.addr, snap)])
    assert lagging.counters.repaired == 1
    assert lagging.store.vector.packed[snap.shard] == snap.version


def test_a_late_snapshot_older_than_the_shard_does_not_take_it_back() -> None:
    case = _snapshot_case()
    lagging = case.lagging
    out = _ask_everything(case)  # asked while empty; the answer is slow to arrive ...
    for delta in case.deltas:  # ... and meanwhile the node caught up from another peer
        case.mesh.give(lagging, delta)
    vector, root = lagging.store.vector, lagging.store.root
    assert root == case.mesh.publisher.store.root
    _deliver(case, out)
    assert lagging.store.vector == vector  # invariant 2: no version goes down
    assert lagging.store.root == root


def test_node_partitioned_through_a_rollback_catches_up_from_a_peer_with_a_short_log() -> None:
    config = ReplicaConfig(fanout=2, shard_groups=1)
    tiny = replace(config, delta_log_bytes_max=1)
    mesh = Mesh({"dc0": 2}, config, configs={"dc0.1": tiny}).join()
    cut_off = mesh.node("dc0.0")
    mesh.drop = lambda _src, send: send.addr == cut_off.addr
    line = lineage(6)
    mesh.publish(*line.deltas[:3])
    to = mesh.validate_head().vector
    root_at_to = mesh.publisher.store.root
    mesh.publish(*line.deltas[3:])
    mesh.roll_back(to)
    # The partition heals; the trainer stays out of reach (the peer's log holds nothing).
    trainer = mesh.publisher.addr
    mesh.drop = lambda src, send: trainer in (src, send.addr)
    assert mesh.run_until(mesh.now + 15.0, lambda: cut_off.store.root == root_at_to)
    assert cut_off.fencing.epoch == 2


# -- gaps ------------------------------------------------------------------------------------------


def test_delta_arriving_before_its_predecessor_is_held_then_applied() -> None:
    mesh = single_dc(1)
    (node,) = mesh.replicas
    chain = shard_chain(shard=3, length=3)
    assert not any(isinstance(e, Persist) for e in mesh.give(node, chain[2]))
    assert not any(isinstance(e, Persist) for e in mesh.give(node, chain[1]))
    assert node.store.vector.packed[3] == 0 and len(node.log) == 0
    effects = mesh.give(node, chain[0])
    assert node.store.vector.packed[3] == chain[2].versions[0]
    assert node.store.root == root_after(chain)
    assert len([e for e in effects if isinstance(e, Persist)]) == 3
    assert node.counters.applied + node.counters.repaired == 3 and node.counters.gap_dropped == 0
    assert len(node.log) == 3


def test_gap_buffer_is_bounded_and_drops_the_oldest() -> None:
    mesh = single_dc(1, gap_buffer_max=4)
    (node,) = mesh.replicas
    chain = shard_chain(shard=5, length=11)
    for delta in chain[1:]:
        mesh.give(node, delta)
    assert node.counters.gap_dropped == 6
    mesh.give(node, chain[0])
    assert node.store.vector.packed[5] == chain[0].versions[0]  # chain[1] was dropped
    for delta in chain[1:7]:  # the dropped ones, repaired later
        mesh.give(node, delta)
    assert node.store.vector.packed[5] == chain[10].versions[0]  # the 4 held ones went in
    assert node.store.root == root_after(chain)


# -- control ---------------------------------------------------------------------------------------


def test_control_request_is_answered_with_rollbacks_in_order_then_newest_validated() -> None:
    mesh = single_dc(2)
    ahead, behind = mesh.replicas
    line = lineage()
    for delta in line.deltas[:4]:
        mesh.give(ahead, delta)
        mesh.give(behind, delta)
    mesh.give(ahead, Validated(vec(line.states[2].vector), 1))
    to = vec(line.states[2].vector)
    rb2, rb3 = Rollback(to, 2), Rollback(to, 3)
    v3 = Validated(to, 3)
    for msg in (rb2, rb3, v3):
        mesh.give(ahead, msg)
    assert ahead.fencing.epoch == 3

    answer = ahead.handle(Incoming(behind.addr, ControlRequest(behind.node_id, 1)), mesh.now)
    assert [(s.addr, s.msg, s.raw, s.route) for s in sends(answer)] == [
        (behind.addr, m, ("raw", m), Route.REPAIR) for m in (rb2, rb3, v3)
    ]


def test_older_epoch_node_asks_for_control_on_a_newer_digest_and_catches_up() -> None:
    mesh = single_dc(2)
    ahead, behind = mesh.replicas
    line = lineage()
    for delta in line.deltas[:4]:
        mesh.give(ahead, delta)
        mesh.give(behind, delta)
    to = vec(line.states[2].vector)
    for msg in (Rollback(to, 2), Rollback(to, 3), Validated(to, 3)):
        mesh.give(ahead, msg)

    # A same-epoch digest with nothing newer validated asks for nothing.
    quiet = behind.handle(Incoming(ahead.addr, _digest(behind), None, Route.MESH), mesh.now)
    assert sends(quiet, ControlRequest) == []

    effects = behind.handle(Incoming(ahead.addr, _digest(ahead), None, Route.MESH), mesh.now)
    asks = sends(effects, ControlRequest)
    assert [(s.addr, s.msg.sender, s.msg.epoch) for s in asks] == [(ahead.addr, behind.node_id, 1)]

    answer = ahead.handle(Incoming(behind.addr, asks[0].msg), mesh.now)
    for send in sends(answer):
        behind.handle(Incoming(ahead.addr, send.msg, send.raw, send.route), mesh.now)
    assert behind.fencing.epoch == 3 and behind.counters.rollbacks == 2
    assert behind.store.root == ahead.store.root and behind.store.vector == to
    assert behind.store.watermark == to

    after = behind.handle(Incoming(ahead.addr, _digest(ahead), None, Route.MESH), mesh.now)
    assert sends(after, ControlRequest) == []


def test_validated_of_a_newer_epoch_asks_for_control() -> None:
    mesh = single_dc(1)
    (node,) = mesh.replicas
    effects = node.handle(Incoming("peer@0", Validated(VersionVector.zeros(N_SHARDS), 2)), 0.0)
    assert [s.addr for s in sends(effects, ControlRequest)] == ["peer@0"]
    assert node.fencing.validated is None


# -- validate() ------------------------------------------------------------------------------------


def test_validate_catches_a_broken_bound() -> None:
    """``validate`` (run after every step above) is not vacuous."""
    mesh = single_dc(1, gap_buffer_max=2)
    (node,) = mesh.replicas
    node.validate()
    node._gap.update({i: (shard_chain(1, 1)[0], None) for i in range(3)})
    with pytest.raises(AssertionError, match="gap buffer"):
        node.validate()


def test_nodes_that_never_hear_the_trainer_still_repair_from_their_datacenter() -> None:
    """A node asks the trainer first until it has heard it, but not only the trainer: with the
    trainer's digests lost both ways, two nodes of one datacenter still converge."""

    def trainer_digests(src: str, send: Send) -> bool:  # True: drop it
        return isinstance(send.msg, SyncDigest) and PUBLISHER_ADDR in (src, send.addr)

    mesh = Mesh({"dc0": 2}, ReplicaConfig(fanout=2, shard_groups=1))
    mesh.drop = trainer_digests
    mesh.join()
    holder, lacking = mesh.node("dc0.0"), mesh.node("dc0.1")
    for delta in lineage(5).deltas:
        mesh.give(holder, delta)
    assert lacking.store.root != holder.store.root
    assert mesh.run_until(mesh.now + 30.0, lambda: lacking.store.root == holder.store.root)
    assert all(PUBLISHER_ID not in {v.digest.sender for v in r.peer_views()} for r in mesh.replicas)


def test_digest_of_another_shard_count_is_rejected_and_ticks_go_on() -> None:
    """A digest whose vector has another length than the store (a lying allow-listed peer,
    found by the rogue peer of the reliability suite) is counted and dropped: kept as a view,
    it made the next pull of a lagging shard index past its end and raise from ``tick``."""
    config = ReplicaConfig(fanout=2, shard_groups=1, repair_grace_s=0.5, request_timeout_s=0.1)
    mesh = Mesh({"dc0": 2, "dc1": 1}, config).join()
    lagging, local, remote = mesh.node("dc0.0"), mesh.node("dc0.1"), mesh.node("dc1.0")
    for delta in lineage(3).deltas:
        mesh.give(local, delta)
    t0 = mesh.now
    lagging.handle(Incoming(local.addr, _digest(local), None, Route.MESH), t0)
    for n in (1, N_SHARDS + 3):
        short = VersionVector.zeros(n)
        lie = SyncDigest(remote.node_id, 1, bytes(16), short, np.zeros(n, np.uint64), short, True)
        effects = lagging.handle(Incoming("rogue@0", lie, None, Route.MESH), t0)
        assert notes(effects, "digest_rejected") and not sends(effects)
    assert lagging.counters.rejected == 2
    assert remote.node_id not in {v.digest.sender for v in lagging.peer_views()}
    pulls = sends(lagging.tick(t0 + 0.6), SyncRequest)
    assert [p.addr for p in pulls] == [local.addr]


# -- the head's strong digests, in steps ----------------------------------------------------------


def _head_after(deltas: Sequence[ParamDelta]) -> Publisher:
    mesh = single_dc(1)
    for delta in deltas:
        mesh.publisher.publish(delta)
    return mesh.publisher


def test_a_stepped_validated_head_is_the_head_when_it_began_while_publishing_goes_on() -> None:
    line = lineage(12, seed=4)
    publisher = _head_after(line.deltas[:6])
    job = publisher.begin_validated_head(7)
    results = []
    for delta in line.deltas[6:]:  # a delta published between every two steps
        results.append(job.step(1))
        publisher.publish(delta)
    while (done := job.step(1)) is None:
        pass
    assert results[0] is None  # 1 shard per step: not done at once
    expected = _head_after(line.deltas[:6]).validated_head(7)
    assert done.vector == expected.vector == vec(line.states[6].vector)
    assert done.shard_digests == expected.shard_digests and done.created_ms == 7
    # The cache remembers them: the next head rehashes only the shards changed since.
    assert (
        publisher.validated_head(8).shard_digests
        == _head_after(line.deltas).validated_head(8).shard_digests
    )


def test_a_rollback_under_a_stepped_validated_head_makes_it_stale() -> None:
    line = lineage(8, seed=5)
    publisher = _head_after(line.deltas)
    job = publisher.begin_validated_head()
    assert job.step(1) is None
    publisher.publish_rollback(Rollback(vec(line.states[4].vector), 2))
    with pytest.raises(StaleHead):
        job.step(LAYOUT.n_shards)
    fresh = publisher.validated_head()  # begun again: the rolled-back head
    assert fresh.vector == vec(line.states[4].vector) and fresh.epoch == 2


def test_digests_built_off_the_loop_are_kept_only_while_their_rows_held() -> None:
    """``build`` runs in a worker thread while the loop publishes: undo released past the
    job's versions before ``confirm`` (rows it hashed may be freed and written over) makes the
    job stale; without it, digests built between publications are the head's as it began."""
    line = lineage(12, seed=6)
    publisher = _head_after(line.deltas[:6])
    job = publisher.begin_validated_head(7)
    while (built := job.build(1)) is None:  # the index scan, a step at a time
        assert job.confirm(built) is None
    for delta in line.deltas[6:9]:  # published while the first digest was being built
        publisher.publish(delta)
    assert job.confirm(built) is None  # kept: the rows it read are undo, not freed
    while (done := job.confirm(job.build(1))) is None:
        pass
    assert done.shard_digests == _head_after(line.deltas[:6]).validated_head(7).shard_digests
    publisher = _head_after(line.deltas[:9])  # a new cache: every shard to hash
    job = publisher.begin_validated_head(8)
    while (built := job.build(LAYOUT.n_shards)) is None:
        assert job.confirm(built) is None
    assert len(built) == LAYOUT.row_shards  # all of them, in one step
    for delta in line.deltas[9:]:
        publisher.publish(delta)
    publisher.store.validate(publisher.store.vector)  # frees the undo the job reads
    with pytest.raises(StaleHead, match="moved under the digests"):
        job.confirm(built)


def test_an_index_grown_under_a_scan_step_built_off_the_loop_makes_the_job_stale() -> None:
    publisher = _head_after(lineage(6, seed=7).deltas)
    job = publisher.begin_validated_head()
    assert job.build(LAYOUT.n_shards) is None  # a scan step "in the thread"
    index = publisher.store.tables[LAYOUT.tables[0]].index
    index.find_or_insert(np.arange(10**6, 10**6 + 4 * index.capacity, dtype=np.int64))
    with pytest.raises(StaleHead, match="an index grew"):
        job.confirm(None)


def test_a_validation_releases_undo_a_slice_per_tick() -> None:
    """A Validated frees ``release_step_records`` undo records at once and the rest one slice
    per ``release_interval_s`` (``next_deadline`` says when, while some is left), so that a
    node's loop never stalls for a whole release, nor do the nodes of a host free theirs in
    the same few milliseconds; the end state is an eager release's."""
    config = ReplicaConfig(fanout=2, shard_groups=1, release_step_records=2)
    mesh = Mesh({"dc0": 1}, config).join()
    node = next(r for r in mesh.by_addr.values() if r.node_id != PUBLISHER_ID)
    line = lineage(10, seed=8)
    for delta in line.deltas:
        mesh.give(node, delta)
    eager = ParamStore(LAYOUT)
    for delta in line.deltas:
        eager.apply(delta)
    msg = validated_of(eager, node.fencing.epoch)
    eager.validate(msg.vector)
    before = node.store.log.undo_rows
    mesh.give(node, msg)
    assert pending(node.store) and before > node.store.log.undo_rows
    now = mesh.now
    assert node.next_deadline() == now + config.release_interval_s
    left = node.store.log.undo_rows
    node.tick(now + config.release_interval_s / 2)  # too soon: nothing more is freed
    assert node.store.log.undo_rows == left
    ticks = 0
    while pending(node.store):
        due = node.next_deadline()
        assert due is not None and due > now
        now = due
        node.tick(now)
        ticks += 1
        assert ticks < 1000
    assert ticks >= 2 and node.store.log.undo_rows == eager.log.undo_rows
    assert node.next_deadline() != now + config.release_interval_s


def pending(store: ParamStore) -> bool:
    """``store.release_pending``, read through a call (mypy narrows a property it has seen)."""
    return store.release_pending
