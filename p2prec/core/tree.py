"""Dissemination trees: one WAN copy per datacenter, then a k-ary tree inside it.

Every node computes the same trees from its own membership view, so no coordinator is needed;
trees are recomputed whenever the view changes. Shards are split into ``groups``, and each group
has its own tree: members are ranked by ``hash(group, node id)``, so different groups put
different nodes at the root and in the interior and the relay work is spread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from blake3 import blake3


@dataclass(frozen=True, order=True)
class TreeMember:
    node_id: str
    dc: str


def group_of_shard(shard: int, groups: int) -> int:
    return shard % groups


def _rank(group: int, node_id: str) -> bytes:
    return blake3(group.to_bytes(4, "little") + node_id.encode()).digest(16)


def _ranker(group: int) -> Callable[[str], bytes]:
    return lambda node_id: _rank(group, node_id)


class TreeView:
    """The trees of every shard group over one membership view."""

    def __init__(self, members: Iterable[TreeMember], fanout: int, groups: int) -> None:
        if fanout < 1 or groups < 1:
            raise ValueError(f"fanout ({fanout}) and groups ({groups}) must be >= 1")
        self.fanout = fanout
        self.groups = groups
        self.members = tuple(sorted(set(members)))
        by_dc: dict[str, list[str]] = {}
        for m in self.members:
            by_dc.setdefault(m.dc, []).append(m.node_id)
        self.dcs = tuple(sorted(by_dc))
        self._dc_of = {m.node_id: m.dc for m in self.members}
        # _order[group][dc]: members of dc in tree order (index 0 is the root).
        self._order = [
            {dc: sorted(ids, key=_ranker(g)) for dc, ids in by_dc.items()} for g in range(groups)
        ]
        self._index = [
            {n: i for order in per_dc.values() for i, n in enumerate(order)}
            for per_dc in self._order
        ]

    def roots(self, group: int) -> dict[str, str]:
        """The root of each datacenter's tree for ``group``: the publisher sends it the copy."""
        return {dc: order[0] for dc, order in self._order[group].items()}

    def children(self, node_id: str, group: int) -> list[str]:
        order, i = self._place(node_id, group)
        if order is None:
            return []
        first = self.fanout * i + 1
        return order[first : first + self.fanout]

    def parent(self, node_id: str, group: int) -> str | None:
        """The node this one receives ``group`` from (None: a root, fed by the publisher)."""
        order, i = self._place(node_id, group)
        if order is None or i == 0:
            return None
        return order[(i - 1) // self.fanout]

    def depth(self, node_id: str, group: int) -> int:
        _, i = self._place(node_id, group)
        depth = 0
        while i > 0:
            i = (i - 1) // self.fanout
            depth += 1
        return depth

    def _place(self, node_id: str, group: int) -> tuple[list[str] | None, int]:
        dc = self._dc_of.get(node_id)
        if dc is None:
            return None, 0
        return self._order[group][dc], self._index[group][node_id]

    def reached_from_roots(self, group: int) -> set[str]:
        """Every node the tree of ``group`` reaches from the roots (for invariant checks)."""
        reached: set[str] = set()
        frontier = list(self.roots(group).values())
        while frontier:
            node = frontier.pop()
            reached.add(node)
            frontier.extend(self.children(node, group))
        return reached

    def interior_nodes(self, group: int) -> set[str]:
        return {m.node_id for m in self.members if self.children(m.node_id, group)}
