"""The trainer's side of the protocol: publish deltas and control messages into the mesh.

The publisher is a member of the mesh (it gossips, and serves catch-up as the last resort) but
never part of a tree: it sends each delta to the root of its group's tree in every datacenter,
so exactly one copy crosses into each datacenter. Its store is the head of the lineage.
"""

from __future__ import annotations

from p2prec.core.deltalog import delta_nbytes
from p2prec.core.effects import Effect, Note, Route, Send
from p2prec.core.fencing import Signed, Verdict
from p2prec.core.replica import Replica
from p2prec.core.tree import group_of_shard
from p2prec.model.snapshot import strong_digests
from p2prec.model.store import ParamStore
from p2prec.wire.messages import ParamDelta, Rollback, Validated


class StrongDigests:
    """BLAKE3 of every shard's canonical snapshot, recomputed only for the shards whose
    (version, digest) changed since the last call (hashing a shard reads all its rows)."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[int, int, bytes]] = {}

    def of(self, store: ParamStore) -> bytes:
        """The n_shards x 32 bytes of ``Validated.shard_digests`` for the store's content."""
        vector, digests = store.vector.packed, store.digests
        state = {s: (int(vector[s]), int(digests[s])) for s in range(store.layout.n_shards)}
        stale = [s for s, now in state.items() if self._known.get(s, (None, None))[:2] != now]
        for shard, strong in strong_digests(store, stale):
            self._known[shard] = (*state[shard], strong)
        return b"".join(self._known[s][2] for s in range(store.layout.n_shards))


class Publisher(Replica):
    """A replica that originates deltas, validations and rollbacks (see module docstring)."""

    _strong_digests: StrongDigests | None = None

    @property
    def _strong(self) -> StrongDigests:
        if self._strong_digests is None:
            self._strong_digests = StrongDigests()
        return self._strong_digests

    def publish(self, delta: ParamDelta, raw: object = None) -> list[Effect]:
        """Apply ``delta`` to the head and send one copy to each datacenter's tree root."""
        result = self.store.apply(delta)
        if result.gaps or len(result.applied) != len(delta.shards):
            raise ValueError(f"delta does not continue the head: {result}")
        raw = delta if raw is None else raw
        self.log.append(delta, raw, delta_nbytes(delta))
        self.counters.applied += 1
        group = group_of_shard(delta.shards[0], self.config.shard_groups) if delta.shards else 0
        return self._to_roots(group, delta, raw)

    def publish_validated(self, msg: Validated, raw: object = None) -> list[Effect]:
        signed = Signed(msg, msg if raw is None else raw)
        if not self.fencing.accept_validated(signed):
            raise ValueError("validated message is stale or of another epoch")
        self.store.validate(msg.vector)
        return self._to_roots(0, msg, signed.raw)

    def validated_head(self, created_ms: int = 0) -> Validated:
        """A ``Validated`` for the head, with the BLAKE3 of every shard's canonical snapshot
        (what lets nodes verify snapshots served by untrusted peers)."""
        store = self.store
        return Validated(store.vector, self.fencing.epoch, created_ms, self._strong.of(store))

    def publish_rollback(self, msg: Rollback, raw: object = None) -> list[Effect]:
        """Roll the head back and announce it. Follow it with
        ``publish_validated(validated_head())``: nodes that missed the old epoch's validation
        need one of the new epoch to verify the snapshots they may have to fetch."""
        signed = Signed(msg, msg if raw is None else raw)
        if self.fencing.accept_rollback(signed) is not Verdict.ADMIT:
            raise ValueError(f"rollback must start epoch {self.fencing.epoch + 1}")
        self.store.rollback(msg.to)
        self.log.truncate_above(msg.to.packed)
        self.counters.rollbacks += 1
        return [Note("rolled_back", {"epoch": msg.new_epoch}), *self._to_roots(0, msg, signed.raw)]

    def _to_roots(self, group: int, msg: object, raw: object) -> list[Effect]:
        sends: list[Effect] = []
        for root in self.tree.roots(group).values():
            addr = self._addr_of(root)
            if addr is not None:
                sends.append(Send(addr, msg, raw, Route.TREE))
        return sends
