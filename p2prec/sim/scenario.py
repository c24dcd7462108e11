"""One seeded simulation run: a stream, a fault schedule, then the invariant checks.

``run(seed, config)`` builds a cluster, publishes a stream (validations, poisoned bursts rolled
back), applies crashes, restarts (some at a new address), datacenter partitions (some longer
than the dead-node timeout), loss, duplication and reordering; then heals everything, stops the
stream and measures how long the mesh takes to converge. Everything comes from the seed: a
failing seed replays identically.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from p2prec.core.fencing import Verdict
from p2prec.core.membership import MembershipConfig
from p2prec.core.replica import Replica, ReplicaConfig
from p2prec.core.tree import TreeMember, TreeView
from p2prec.model.layout import StoreLayout
from p2prec.sim.cluster import Cluster, SimNode, StreamModel, Violation
from p2prec.sim.network import LinkModel


@dataclass(frozen=True)
class FaultModel:
    crashes: int = 2  # nodes crashed then restarted during the stream
    crash_down_s: tuple[float, float] = (0.5, 8.0)
    move_on_restart_share: float = 0.5  # restarts that come back at a new address
    partitions: int = 1  # datacenters cut off from all others for a while
    partition_s: tuple[float, float] = (1.0, 8.0)
    loss: float = 0.01
    duplication: float = 0.01
    jitter_s: float = 0.003


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 12
    dcs: int = 3
    layout: StoreLayout = field(default_factory=lambda: StoreLayout(row_shards=8, dim=4))
    stream: StreamModel = field(default_factory=StreamModel)
    stream_s: float = 6.0  # how long the publisher publishes
    start_s: float = 1.0  # when it starts (membership forms first)
    faults: FaultModel = field(default_factory=FaultModel)
    settle_bound_s: float = 30.0  # convergence must come within this after the last fault
    replica: ReplicaConfig = field(
        default_factory=lambda: ReplicaConfig(
            fanout=3, shard_groups=3, anti_entropy_interval_s=0.5, repair_grace_s=0.3
        )
    )
    membership: MembershipConfig = field(default_factory=MembershipConfig)


@dataclass
class SimResult:
    seed: int
    converged: bool
    converge_s: float  # from the last fault (or the end of the stream) to convergence
    violations: list[Violation]
    steps: int
    rollbacks: int
    restarts: int
    wan_deltas: int
    lan_deltas: int

    @property
    def ok(self) -> bool:
        return self.converged and not self.violations


def run(seed: int, config: SimConfig) -> SimResult:
    links = LinkModel(
        loss=config.faults.loss,
        duplication=config.faults.duplication,
        jitter_s=config.faults.jitter_s,
    )
    cluster = Cluster.build(
        seed,
        config.nodes,
        config.dcs,
        config.layout,
        links,
        config.replica,
        config.membership,
        config.stream,
    )
    rollbacks = _schedule_stream(cluster, config)
    last_fault = _schedule_faults(cluster, config)
    quiet = max(last_fault, config.start_s + config.stream_s)
    cluster.run_until(quiet)
    settled = cluster.run_until(quiet + config.settle_bound_s, lambda: converged(cluster))
    converge_s = cluster.now - quiet
    cluster.violations += _final_checks(cluster, settled)
    return SimResult(
        seed,
        settled,
        converge_s,
        cluster.violations,
        cluster.steps,
        rollbacks,
        sum(n.restarts for n in cluster.nodes.values()),
        cluster.network.traffic.wan_deltas,
        cluster.network.traffic.lan_deltas,
    )


def _schedule_stream(cluster: Cluster, config: SimConfig) -> int:
    """Publication steps, validations, and poisoned bursts followed by a rollback."""
    stream, rng = config.stream, cluster.rng
    t, end, rollbacks = config.start_s, config.start_s + config.stream_s, 0
    step = 0
    while t < end:
        cluster.at(t, cluster.publish_step)
        step += 1
        t += stream.interval_s
        if step % stream.validate_every == 0:
            cluster.at(t, cluster.publish_validated)
            if rng.random() < stream.rollback_share and t + 4 * stream.interval_s < end:
                for _ in range(3):  # the poisoned burst
                    t += stream.interval_s
                    cluster.at(t, cluster.publish_step)
                t += stream.interval_s
                cluster.at(t, cluster.publish_rollback)
                rollbacks += 1
    return rollbacks


def _schedule_faults(cluster: Cluster, config: SimConfig) -> float:
    """Crashes with restarts and partitions inside the stream window; returns the last end."""
    faults, rng = config.faults, cluster.rng
    lo, hi = config.start_s, config.start_s + config.stream_s
    last = 0.0
    victims = rng.choice(
        sorted(cluster.nodes), size=min(faults.crashes, len(cluster.nodes)), replace=False
    )
    for node_id in victims:
        start = float(rng.uniform(lo, hi))
        down = float(rng.uniform(*faults.crash_down_s))
        # Seeds are stable addresses (in production, names): only other nodes move.
        movable = cluster.replica_at_seed(str(node_id)) is False
        moved = bool(rng.random() < faults.move_on_restart_share) and movable
        cluster.at(start, functools.partial(_crash, cluster, str(node_id)))
        cluster.at(start + down, functools.partial(_restart, cluster, str(node_id), moved))
        last = max(last, start + down)
    dcs = sorted({n.dc for n in cluster.nodes.values()})
    for _ in range(faults.partitions):
        dc = dcs[int(rng.integers(0, len(dcs)))]
        start = float(rng.uniform(lo, hi))
        length = float(rng.uniform(*faults.partition_s))
        cluster.at(start, functools.partial(_cut, cluster, dc, True))
        cluster.at(start + length, functools.partial(_cut, cluster, dc, False))
        last = max(last, start + length)
    return last


def _crash(cluster: Cluster, node_id: str) -> None:
    node = cluster.nodes[node_id]
    if not node.up:
        return
    node.up = False
    cluster.network.down.add(node.replica.addr)
    cluster.forget(node.replica.addr)


def _restart(cluster: Cluster, node_id: str, moved: bool) -> None:
    """Bring a node back from its disk state (store, delta log, fencing), maybe elsewhere."""
    node = cluster.nodes[node_id]
    old = node.replica
    addr = cluster.new_addr(node_id) if moved else old.addr
    replica = cluster.make_node(node_id, node.dc, addr, old.store)
    replica.log, replica.fencing = old.log, old.fencing
    node.replica, node.up = replica, True
    node.restarts += 1


def _cut(cluster: Cluster, dc: str, on: bool) -> None:
    others = {n.dc for n in cluster.nodes.values()} | {cluster.publisher.dc}
    for other in others - {dc}:
        pair = frozenset((dc, other))
        if on:
            cluster.network.cut.add(pair)
        else:
            cluster.network.cut.discard(pair)


def _live(cluster: Cluster) -> list[SimNode]:
    return [n for n in cluster.nodes.values() if n.up]


def converged(cluster: Cluster) -> bool:
    """Every live node holds the trainer's state and sees every live node alive."""
    head = cluster.publisher
    if not all(_same_state(n.replica, head) for n in _live(cluster)):
        return False
    live = {n.node_id for n in _live(cluster)}
    return all(_seen_alive(n.replica) == live for n in _live(cluster))


def _seen_alive(replica: Replica) -> set[str]:
    return set(replica.tree.reached_from_roots(0))


def _same_state(replica: Replica, head: Replica) -> bool:
    return (
        replica.fencing.epoch == head.fencing.epoch
        and replica.store.vector == head.store.vector
        and replica.store.root == head.store.root
    )


def _final_checks(cluster: Cluster, converged: bool) -> list[Violation]:
    now, head = cluster.now, cluster.publisher
    out = []
    for node in _live(cluster):
        if not _same_state(node.replica, head):
            out.append(
                Violation(
                    now,
                    node.node_id,
                    "convergence",
                    f"root {node.replica.store.root.hex()} != trainer {head.store.root.hex()}",
                )
            )
        out += _fencing_violations(cluster, node)
        try:
            node.replica.validate()
        except AssertionError as exc:
            out.append(Violation(now, node.node_id, "validate", str(exc)))
    return out + _tree_violations(cluster)


def _fencing_violations(cluster: Cluster, node: SimNode) -> list[Violation]:
    """No shard of a node sits at a version fenced by a rollback the trainer made."""
    from p2prec.wire.messages import ParamDelta

    vector = node.replica.store.vector.packed
    probe = ParamDelta(
        tuple(range(len(vector))),
        tuple(np.zeros(len(vector), int).tolist()),
        tuple(int(v) for v in vector),
    )
    if cluster.publisher.fencing.judge(probe) is Verdict.FENCED:
        return [Violation(cluster.now, node.node_id, "fencing", "holds a fenced version")]
    return []


def _tree_violations(cluster: Cluster) -> list[Violation]:
    """Every live node's view holds every live node, and each group's tree spans them."""
    live = {n.node_id for n in _live(cluster)}
    out = []
    config = cluster.replica_config
    view = TreeView(
        [TreeMember(n.node_id, n.dc) for n in _live(cluster)], config.fanout, config.shard_groups
    )
    for group in range(config.shard_groups):
        if view.reached_from_roots(group) != live:
            out.append(Violation(cluster.now, "-", "tree", f"group {group} misses nodes"))
    for node in _live(cluster):
        members = set(node.replica.tree.reached_from_roots(0))
        if members != live:
            missing = sorted(live - members)[:3]
            out.append(
                Violation(
                    cluster.now,
                    node.node_id,
                    "tree",
                    f"view misses {missing} / has extra {sorted(members - live)[:3]}",
                )
            )
    return out
