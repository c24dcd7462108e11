"""The lag figure behind /readyz: a node is caught up only once it holds what the trainer's
own digest reports (peers that started as empty as the node prove nothing)."""

from __future__ import annotations

from test_replica import Mesh, lineage

from p2prec.core.effects import Incoming
from p2prec.core.replica import Replica, ReplicaConfig
from p2prec.core.sync import digest_of
from p2prec.serve.lag import LagTracker


def hear_digest(node: Replica, peer: Replica, now: float) -> None:
    digest = digest_of(peer.node_id, peer.store, peer.fencing.epoch)
    node.handle(Incoming(peer.addr, digest), now)


def test_empty_peers_do_not_make_a_node_caught_up_the_trainer_does() -> None:
    mesh = Mesh({"dc0": 2}, ReplicaConfig(fanout=2, shard_groups=1)).join()
    node, empty_peer = mesh.node("dc0.0"), mesh.node("dc0.1")
    clock = [0.0]
    tracker = LagTracker(clock_s=lambda: clock[0])
    hear_digest(node, empty_peer, mesh.now)
    lag = tracker.observe(node)
    assert lag.versions == 0 and not lag.caught_up  # as empty as its peer: proves nothing

    mesh.drop = lambda _src, _send: True  # the node misses the stream
    for delta in lineage(4).deltas:
        mesh.carry(mesh.publisher, mesh.publisher.publish(delta, raw=("raw", delta)))
    hear_digest(node, mesh.publisher, mesh.now)
    clock[0] = 2.0
    tracker.observe(node)
    clock[0] = 2.5
    lag = tracker.observe(node)
    assert lag.versions > 0 and not lag.caught_up
    assert lag.ms == 500.0  # behind since it first saw it

    for delta in lineage(4).deltas:
        mesh.give(node, delta)
    hear_digest(node, mesh.publisher, mesh.now)
    lag = tracker.observe(node)
    assert lag.versions == 0 and lag.ms == 0.0 and lag.caught_up
