"""What a node's HTTP API reports about it: readiness, status, its place in the trees."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from p2prec.core.membership import Membership
from p2prec.core.replica import Replica
from p2prec.io.node import NodeDriver
from p2prec.model import scoring
from p2prec.serve.lag import Lag


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str  # "" when ready


def missing_model(replica: Replica) -> str:
    """Why ``replica`` cannot score yet ('' when it can): no rows, or incomplete dense weights."""
    if replica.store.vector.total_seq() == 0:
        return "no model yet (empty version vector)"
    try:
        scoring.tower(replica.store)
    except scoring.ModelUnavailable as exc:
        return f"no model yet ({exc})"
    return ""


def readiness(driver: NodeDriver, lag: Lag, lag_ms_max: float) -> Readiness:
    if driver.replica is None:
        return Readiness(False, "starting")
    missing = missing_model(driver.replica)
    if missing:
        return Readiness(False, missing)
    if not lag.caught_up:
        return Readiness(False, "catching up (not yet level with any peer's digest)")
    if lag.ms > lag_ms_max:
        return Readiness(False, f"lagging by {lag.ms:.0f} ms (> {lag_ms_max:.0f} ms)")
    return Readiness(True, "")


def peers(replica: Replica) -> list[dict[str, Any]]:
    """Every member this node knows, with its SWIM state (itself excluded)."""
    membership = replica.membership
    if not isinstance(membership, Membership):
        return [
            {"id": m.node_id, "addr": m.addr, "dc": m.dc, "state": "alive"}
            for m in membership.alive_members()
            if m.node_id != replica.node_id
        ]
    return [
        {"id": r.node_id, "addr": r.addr, "dc": r.dc, "state": str(r.state)}
        for r in sorted(membership.members(), key=lambda r: r.node_id)
        if r.node_id != replica.node_id
    ]


def tree_place(replica: Replica) -> list[dict[str, Any]]:
    """Parent and children of this node in each shard group's tree (a root's parent is the
    publisher)."""
    tree = replica.tree
    publisher = replica.config.publisher_id
    if replica.node_id == publisher:
        return [{"group": g, "parent": None, "children": []} for g in range(tree.groups)]
    return [
        {
            "group": g,
            "parent": tree.parent(replica.node_id, g) or publisher,
            "children": tree.children(replica.node_id, g),
            "depth": tree.depth(replica.node_id, g),
        }
        for g in range(tree.groups)
    ]


def node_status(driver: NodeDriver, lag: Lag, ready: Readiness) -> dict[str, Any]:
    base = driver.status()
    replica = driver.replica
    assert replica is not None
    store = replica.store
    return {
        "id": base["id"],
        "dc": base["dc"],
        "role": base["role"],
        "addr": base["addr"],
        "url": base["url"],
        "pid": base["pid"],
        "ready": ready.ready,
        "not_ready_reason": ready.reason or None,
        "epoch": base["epoch"],
        "merkle_root": base["merkle_root"],
        "vector_summary": base["summary"],
        "total_versions": store.vector.total_seq(),
        "watermark": store.watermark.to_list(),
        "watermark_summary": store.watermark.summary(),
        "lag": {
            "versions": lag.versions,
            "ms": round(lag.ms, 1),
            "peers_heard": lag.peers_heard,
            "caught_up": lag.caught_up,
        },
        "lag_versions": lag.versions,
        "lag_ms": round(lag.ms, 1),
        "peers": peers(replica),
        "tree": tree_place(replica),
        "counters": {
            "applied": replica.counters.applied,
            "repaired": replica.counters.repaired,
            "rejected": replica.counters.rejected + driver.counters.decode_rejected,
            **{f"replica_{k}": v for k, v in asdict(replica.counters).items()},
        },
        "transport": base["transport"],
    }
