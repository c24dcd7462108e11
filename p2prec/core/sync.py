"""Anti-entropy: find what a node lacks from peers' digests, and serve what peers lack.

Pure functions over a node's parts. A node learns peers' vectors from their ``SyncDigest``;
a shard stays "behind" for a grace period before it is pulled, so that a delta still in flight
down the tree is not fetched twice. Pulls go to a peer of the same datacenter when one is known
to hold the shard, across the WAN only otherwise. The server answers with the original signed
deltas when its log reaches back far enough, else with a snapshot of the shard at the
validation watermark (verifiable against the signed ``Validated`` digests) followed by the
deltas since the watermark.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np

from p2prec.core.deltalog import DeltaLog, LoggedDelta
from p2prec.core.fencing import Fencing
from p2prec.model.snapshot import snapshot_shard
from p2prec.model.store import ParamStore
from p2prec.wire.messages import ShardSnapshot, SyncDigest, SyncRequest, Validated


@dataclass(frozen=True)
class PeerView:
    """The newest digest heard from a peer, with when and where from."""

    digest: SyncDigest
    dc: str
    heard_at: float


def digest_of(node_id: str, store: ParamStore, epoch: int, is_reply: bool = False) -> SyncDigest:
    return SyncDigest(
        node_id, epoch, store.root, store.vector, store.digests, store.watermark, is_reply
    )


def behind_shards(store: ParamStore, epoch: int, peer: SyncDigest) -> list[int]:
    """Shards where ``peer`` (on the same epoch) is ahead of ``store``."""
    if peer.epoch != epoch or len(peer.vector) != store.layout.n_shards:
        return []
    return [int(s) for s in store.vector.behind_shards(peer.vector)]


def diverged_shards(store: ParamStore, epoch: int, peer: SyncDigest) -> list[int]:
    """Shards at the same version as ``peer`` whose content differs (should never happen with
    signed deltas; repaired by a verified snapshot if it does)."""
    if peer.epoch != epoch or len(peer.vector) != store.layout.n_shards:
        return []
    same = store.vector_view == peer.vector.packed
    return [int(s) for s in np.flatnonzero(same & (store.digests != peer.digests))]


def pick_source(
    shard: int,
    version: int,
    views: dict[str, PeerView],
    my_dc: str,
    rng: np.random.Generator,
    epoch: int,
    publisher_id: str,
    chosen: Collection[str] = (),
) -> str | None:
    """A peer of ``epoch`` known to hold ``shard`` at ``version`` or newer: one of this
    datacenter first, then another datacenter's node, the trainer last; among equals, one
    already ``chosen`` for other shards of the same pull. A signed delta cannot be split: a
    peer asked for some of its shards sends all of it, so shards spread over two peers brought
    the same delta twice (2.04x the bytes lacked in half the catch-up runs of mesh_bench)."""
    holders = [
        pid
        for pid, v in views.items()
        if v.digest.epoch == epoch and v.digest.vector.packed[shard] >= version
    ]
    local = [pid for pid in holders if views[pid].dc == my_dc and pid != publisher_id]
    remote = [pid for pid in holders if pid not in local and pid != publisher_id]
    pool = local or remote or [pid for pid in holders if pid == publisher_id]
    if not pool:
        return None
    again = next((pid for pid in chosen if pid in pool), None)
    return again if again is not None else pool[int(rng.integers(0, len(pool)))]


@dataclass(frozen=True, eq=False)
class Reply:
    """What to send back for a ``SyncRequest``: control, snapshots, then deltas, in order."""

    validated: object | None  # raw signed Validated to send first, when snapshots follow
    snapshots: list[ShardSnapshot]
    deltas: list[LoggedDelta]


def serve(
    request: SyncRequest, store: ParamStore, log: DeltaLog, fencing: Fencing, deltas_max: int
) -> Reply:
    """The catch-up for ``request`` that this node can vouch for."""
    snapshots, since = [], []
    for shard, have in zip(request.shards, request.since, strict=True):
        if not 0 <= shard < store.layout.n_shards:
            continue
        from_version = have
        if request.snapshot_only or not log.covers(shard, have):
            snap = _snapshot_at_watermark(shard, have, store, fencing, request.snapshot_only)
            if snap is None:
                continue
            snapshots.append(snap)
            from_version = snap.version
        if log.covers(shard, from_version):
            since.append((shard, from_version))
    deltas = log.since([s for s, _ in since], [v for _, v in since]) if since else []
    validated = fencing.validated.raw if snapshots and fencing.validated else None
    return Reply(validated, snapshots, deltas[:deltas_max])


def _snapshot_at_watermark(
    shard: int, have: int, store: ParamStore, fencing: Fencing, forced: bool
) -> ShardSnapshot | None:
    if fencing.validated is None:
        return None
    validated = fencing.validated.msg
    assert isinstance(validated, Validated)
    if not validated.shard_digests or len(validated.vector) != store.layout.n_shards:
        return None
    at = int(validated.vector.packed[shard])
    if (at <= have and not forced) or not store.can_read_at(shard, at):
        return None
    return ShardSnapshot(shard, at, snapshot_shard(store, shard, at=at))


def request_for(
    node_id: str, store: ParamStore, shards: Iterable[int], snapshot_only: bool = False
) -> SyncRequest:
    chosen = tuple(sorted(set(shards)))
    since = tuple(int(store.vector_view[s]) for s in chosen)
    return SyncRequest(node_id, chosen, since, snapshot_only)
