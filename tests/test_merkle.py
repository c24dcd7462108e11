import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from p2prec.core.merkle import MerkleTree


@given(st.integers(1, 130), st.data())
def test_diff_names_exactly_the_differing_leaves(n: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    a = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    changed = sorted(set(data.draw(st.lists(st.integers(0, n - 1), max_size=n))))
    b = a.copy()
    b[changed] += np.uint64(1)
    ta, tb = MerkleTree.build(a), MerkleTree.build(b)
    assert ta.diff(tb) == changed
    assert (ta.root == tb.root) == (not changed)


def test_root_depends_on_position_not_only_the_multiset() -> None:
    a = np.array([1, 2, 3], dtype=np.uint64)
    assert MerkleTree.build(a).root != MerkleTree.build(a[::-1].copy()).root
    assert MerkleTree.build(a).level(0) == (MerkleTree.build(a).root,)
