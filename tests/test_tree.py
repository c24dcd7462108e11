import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2prec.core.tree import TreeMember, TreeView


def mesh(dcs: int, per_dc: int) -> list[TreeMember]:
    return [TreeMember(f"n{d}-{i}", f"dc{d}") for d in range(dcs) for i in range(per_dc)]


@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 6), st.integers(1, 8))
def test_every_group_tree_spans_each_dc_once(
    dcs: int, per_dc: int, fanout: int, groups: int
) -> None:
    view = TreeView(mesh(dcs, per_dc), fanout, groups)
    everyone = {m.node_id for m in view.members}
    for g in range(groups):
        roots = view.roots(g)
        assert sorted(roots) == [f"dc{d}" for d in range(dcs)]  # one WAN copy per DC
        assert view.reached_from_roots(g) == everyone
        received: list[str] = list(roots.values())
        for m in view.members:
            kids = view.children(m.node_id, g)
            assert len(kids) <= fanout
            assert all(view.parent(k, g) == m.node_id for k in kids)
            assert all(k.split("-")[0] == m.node_id.split("-")[0] for k in kids)  # same DC
            received += kids
        assert sorted(received) == sorted(everyone)  # each node gets exactly one copy


def test_groups_spread_the_relay_work() -> None:
    view = TreeView(mesh(3, 12), fanout=3, groups=8)
    interior = [view.interior_nodes(g) for g in range(8)]
    always = set.intersection(*interior)
    assert not always  # no node relays every group
    roots = {r for g in range(8) for r in view.roots(g).values()}
    assert len(roots) > 3


def test_trees_are_deterministic_and_follow_the_view() -> None:
    members = mesh(2, 7)
    a = TreeView(members, 2, 4)
    b = TreeView(reversed(members), 2, 4)
    assert all(
        a.children(m.node_id, g) == b.children(m.node_id, g) for m in members for g in range(4)
    )
    root = a.roots(0)["dc0"]
    without = TreeView([m for m in members if m.node_id != root], 2, 4)
    assert root not in without.reached_from_roots(0)
    assert without.reached_from_roots(0) == {m.node_id for m in members} - {root}
    assert without.children(root, 0) == []
    assert without.depth(without.roots(0)["dc0"], 0) == 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="fanout"):
        TreeView(mesh(1, 2), 0, 1)
