"""N replicas and a publisher of the real core on one seeded simulated network.

The cluster owns virtual time. It delivers messages, runs each node's timers at its
``next_deadline()``, lets the publisher publish a stream of deltas (with validations, and
poisoned bursts rolled back), and applies a seeded schedule of faults: crashes and restarts
(the store, delta log and fencing survive on "disk"; a restart may come back at a new address),
datacenter partitions, message loss, duplication and reordering.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from p2prec.core.effects import Effect, Incoming, Send
from p2prec.core.membership import Membership, MembershipConfig
from p2prec.core.publisher import Publisher
from p2prec.core.replica import Replica, ReplicaConfig
from p2prec.core.tree import group_of_shard
from p2prec.core.versions import SEQ_BITS, VersionVector
from p2prec.model.keyhash import shard_of, table_salt
from p2prec.model.layout import StoreLayout
from p2prec.model.store import ParamStore
from p2prec.sim.lineage import make_delta
from p2prec.sim.network import LinkModel, SimNetwork
from p2prec.wire.messages import ParamDelta, Rollback

PUBLISHER_ID = "trainer"
R = TypeVar("R", bound=Replica)


@dataclass(frozen=True)
class StreamModel:
    """The publisher's stream: cadence, size, validation and poisoned bursts."""

    interval_s: float = 0.05  # one publication step (split per shard group) every interval
    rows_per_step: int = 6
    key_space: int = 400
    validate_every: int = 8  # steps between validations
    rollback_share: float = 0.2  # share of validations followed by a burst that is rolled back
    dense_every: int = 4


@dataclass
class SimNode:
    node_id: str
    dc: str
    replica: Replica
    up: bool = True
    restarts: int = 0


@dataclass
class Violation:
    at: float
    node: str
    invariant: str
    detail: str


@dataclass
class Cluster:
    """The simulated mesh (build it with ``Cluster.build``)."""

    rng: np.random.Generator
    layout: StoreLayout
    network: SimNetwork
    replica_config: ReplicaConfig
    membership_config: MembershipConfig
    stream: StreamModel
    publisher: Publisher = field(init=False)  # made by build(), once the cluster exists
    nodes: dict[str, SimNode] = field(default_factory=dict)
    now: float = 0.0
    violations: list[Violation] = field(default_factory=list)
    _timers: list[tuple[float, int, str]] = field(default_factory=list)
    _actions: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _addr_gen: itertools.count[int] = field(default_factory=itertools.count)
    steps: int = 0
    validated: VersionVector | None = None
    _by_addr: dict[str, Replica] = field(default_factory=dict)
    _seeds: list[str] = field(default_factory=list)
    _scheduled: dict[str, float] = field(default_factory=dict)
    # epoch -> (rollback point, the trainer's shard digests there)
    rollback_points: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    # -- building --------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        seed: int,
        n_nodes: int,
        n_dcs: int,
        layout: StoreLayout,
        links: LinkModel,
        replica_config: ReplicaConfig,
        membership_config: MembershipConfig,
        stream: StreamModel,
    ) -> Cluster:
        rng = np.random.default_rng(seed)
        network = SimNetwork(np.random.default_rng(rng.integers(2**63)), links)
        cluster = cls(rng, layout, network, replica_config, membership_config, stream)
        addrs = [cluster.new_addr(f"n{i:03d}") for i in range(n_nodes)]
        # Seeds: the trainer and the first node of each datacenter.
        cluster._seeds = ["trainer@0", *addrs[:n_dcs]]
        cluster.publisher = cluster._make(
            Publisher,
            PUBLISHER_ID,
            "dc-trainer",
            "trainer@0",
            cluster._seeds[1:],
            ParamStore(layout),
        )
        for i, addr in enumerate(addrs):
            dc = f"dc{i % n_dcs}"
            node_id = f"n{i:03d}"
            replica = cluster.make_node(node_id, dc, addr, ParamStore(layout))
            cluster.nodes[node_id] = SimNode(node_id, dc, replica)
        return cluster

    def new_addr(self, node_id: str) -> str:
        return f"{node_id}@{next(self._addr_gen)}"

    def make_node(self, node_id: str, dc: str, addr: str, store: ParamStore) -> Replica:
        seeds = [a for a in self._seeds if a != addr]
        return self._make(Replica, node_id, dc, addr, seeds, store)

    def replica_at_seed(self, node_id: str) -> bool:
        """True when the node listens at one of the seed addresses."""
        return self.nodes[node_id].replica.addr in self._seeds

    def forget(self, addr: str) -> None:
        self._by_addr.pop(addr, None)
        self._scheduled.pop(addr, None)

    def _make(
        self, kind: type[R], node_id: str, dc: str, addr: str, seeds: list[str], store: ParamStore
    ) -> R:
        membership = Membership(
            node_id,
            addr,
            dc,
            self.membership_config,
            np.random.default_rng(self.rng.integers(2**63)),
            seeds,
        )
        replica = kind(
            node_id,
            addr,
            dc,
            store,
            membership,
            self.replica_config,
            np.random.default_rng(self.rng.integers(2**63)),
        )
        self.network.attach(addr, dc)
        self._by_addr[addr] = replica
        self._schedule_timer(replica)
        return replica

    # -- the event loop --------------------------------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._actions, (when, next(self._seq), action))

    def _schedule_timer(self, replica: Replica) -> None:
        """Keep one live timer entry per replica, at its next deadline (stale entries, left in
        the heap when a deadline moves, are skipped when popped)."""
        deadline = replica.next_deadline()
        if deadline is None:
            return
        deadline = max(deadline, self.now)
        if self._scheduled.get(replica.addr) == deadline:
            return
        self._scheduled[replica.addr] = deadline
        heapq.heappush(self._timers, (deadline, next(self._seq), replica.addr))

    def run_until(
        self, end: float, stop: Callable[[], bool] | None = None, check_every_s: float = 0.1
    ) -> bool:
        """Advance virtual time to ``end``; returns True as soon as ``stop()`` holds."""
        next_check = self.now
        while True:
            if stop is not None and self.now >= next_check:
                if stop():
                    return True
                next_check = self.now + check_every_s
            when = self._next_time()
            if when is None or when > end:
                self.now = end
                return stop() if stop is not None else False
            self.now = when
            self._step()

    def _next_time(self) -> float | None:
        times = [q[0][0] for q in (self._timers, self._actions) if q]
        net = self.network.next_time()
        if net is not None:
            times.append(net)
        return min(times) if times else None

    def _step(self) -> None:
        if self._actions and self._actions[0][0] <= self.now:
            heapq.heappop(self._actions)[2]()
        elif self._timers and self._timers[0][0] <= self.now:
            when, _, addr = heapq.heappop(self._timers)
            replica = self._replica_at(addr)
            if replica is not None and self._scheduled.get(addr) == when:
                del self._scheduled[addr]
                self._run(replica, lambda r: r.tick(self.now), "tick")
        else:
            self._deliver()

    def _deliver(self) -> None:
        d = self.network.pop()
        replica = self._replica_at(d.dst)
        if replica is None or self.network.blocked(d.src, d.dst):
            self.network.traffic.dropped += 1
            return
        event = Incoming(d.src, d.msg, d.raw, d.route)
        self._run(replica, lambda r: r.handle(event, self.now), type(d.msg).__name__)

    def _replica_at(self, addr: str) -> Replica | None:
        return self._by_addr.get(addr)

    def _run(self, replica: Replica, step: Callable[[Replica], list[Effect]], what: str) -> None:
        before = replica.store.vector.packed.copy()
        epoch = replica.fencing.epoch
        effects = step(replica)
        self._check_monotonic(replica, before, epoch, what)
        if replica.fencing.epoch > epoch and replica is not self.publisher:
            self._check_rollback(replica)
        self._carry_out(replica, effects)
        self._schedule_timer(replica)

    def _carry_out(self, replica: Replica, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self.network.send(
                    self.now,
                    replica.addr,
                    effect.addr,
                    effect.msg,
                    effect.raw,
                    effect.route,
                    isinstance(effect.msg, ParamDelta),
                )

    # -- invariants checked while running ----------------------------------------------------

    def _check_monotonic(self, replica: Replica, before: np.ndarray, epoch: int, what: str) -> None:
        after = replica.store.vector.packed
        if (after < before).any() and replica.fencing.epoch == epoch:
            self.violations.append(
                Violation(
                    self.now, replica.node_id, "monotonic", f"a shard version went down on {what}"
                )
            )

    def _check_rollback(self, replica: Replica) -> None:
        """Right after a node takes a rollback, no shard is past the rollback point in the old
        lineage, and every shard at that point has exactly the trainer's content there."""
        epoch = replica.fencing.epoch
        to, digests = self.rollback_points[epoch]
        vector, held = replica.store.vector_view, replica.store.digests
        at_point = vector == to
        old_lineage = (vector > to) & ((vector >> SEQ_BITS) < epoch)  # new-epoch steps may follow
        if old_lineage.any() or (held[at_point] != digests[at_point]).any():
            self.violations.append(
                Violation(
                    self.now,
                    replica.node_id,
                    "rollback",
                    f"content differs from the trainer's at epoch {epoch}",
                )
            )

    # -- the publisher's stream ------------------------------------------------------------------

    def publish_step(self, epoch_override: int | None = None) -> None:
        """One publication step, split into one delta per shard group."""
        store = self.publisher.store
        epoch = self.publisher.fencing.epoch if epoch_override is None else epoch_override
        for delta in self._step_deltas(store, epoch):
            self._carry_out(self.publisher, self.publisher.publish(delta))
        self.steps += 1
        self._schedule_timer(self.publisher)

    def _step_deltas(self, store: ParamStore, epoch: int) -> list[ParamDelta]:
        groups = self.replica_config.shard_groups
        keys = {
            t: np.unique(
                self.rng.integers(
                    -self.stream.key_space, self.stream.key_space, self.stream.rows_per_step
                )
            )
            for t in self.layout.tables
        }
        by_group: dict[int, dict[str, np.ndarray]] = {}
        for table, k in keys.items():
            group = shard_of(table_salt(table), k, self.layout.row_shards) % groups
            for g in np.unique(group):
                by_group.setdefault(int(g), {})[table] = k[group == g]
        dense_group = group_of_shard(self.layout.dense_shard, groups)
        with_dense = self.steps % self.stream.dense_every == 0
        if with_dense:
            by_group.setdefault(dense_group, {})
        deltas = []
        for g in sorted(by_group):
            vector = store.vector.packed
            delta = make_delta(
                self.layout, vector, by_group[g], with_dense and g == dense_group, self.rng, epoch
            )
            deltas.append(delta)
        return deltas

    def publish_validated(self) -> None:
        msg = self.publisher.validated_head(int(self.now * 1000))
        self.validated = msg.vector
        self._carry_out(self.publisher, self.publisher.publish_validated(msg))
        self._schedule_timer(self.publisher)

    def publish_rollback(self) -> None:
        to = (
            self.validated
            if self.validated is not None
            else VersionVector.zeros(self.layout.n_shards)
        )
        msg = Rollback(to, self.publisher.fencing.epoch + 1, int(self.now * 1000))
        self._carry_out(self.publisher, self.publisher.publish_rollback(msg))
        self.rollback_points[msg.new_epoch] = (to.packed, self.publisher.store.digests)
        self.publish_validated()  # of the new epoch, at the rollback point
        self._schedule_timer(self.publisher)
