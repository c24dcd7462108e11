import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2prec.core.versions import EPOCH_MAX, SEQ_MAX, Order, Version, VersionVector, next_packed

versions = st.builds(Version, st.integers(0, EPOCH_MAX), st.integers(0, SEQ_MAX))


@given(versions, versions)
def test_packing_preserves_order(a: Version, b: Version) -> None:
    assert (a < b) == (a.packed < b.packed)
    assert Version.unpack(a.packed) == a


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="epoch"):
        Version(EPOCH_MAX + 1, 0)
    with pytest.raises(ValueError, match="seq"):
        Version(0, -1)


def test_next_never_lowers_the_epoch() -> None:
    assert Version(2, 5).next() == Version(2, 6)
    assert Version(2, 5).next(3) == Version(3, 6)
    with pytest.raises(ValueError, match="epoch may not go back"):
        Version(2, 5).next(1)


@given(st.lists(versions, max_size=8), st.integers(0, EPOCH_MAX))
def test_next_packed_is_next_of_each(bases: list[Version], epoch: int) -> None:
    packed = np.array([b.packed for b in bases], dtype=np.int64)
    fits = all(b.epoch <= epoch and b.seq < SEQ_MAX for b in bases)
    if not fits:
        with pytest.raises(ValueError, match=r"epoch|seq"):
            next_packed(packed, epoch)
        return
    assert next_packed(packed, epoch).tolist() == [b.next(epoch).packed for b in bases]


def vv(*pairs: tuple[int, int]) -> VersionVector:
    return VersionVector.of(Version(e, s) for e, s in pairs)


def test_compare_dominates_merge_and_differing_shards() -> None:
    a = vv((1, 1), (1, 2), (1, 3))
    b = vv((1, 1), (1, 4), (1, 3))
    c = vv((1, 2), (1, 0), (1, 3))
    assert a.compare(a) is Order.EQUAL
    assert a.compare(b) is Order.BEFORE
    assert b.compare(a) is Order.AFTER
    assert b.compare(c) is Order.CONCURRENT
    assert b.dominates(a) and not a.dominates(b)
    assert a.merge(c) == vv((1, 2), (1, 2), (1, 3))
    assert list(b.differing_shards(c)) == [0, 1]
    assert list(a.behind_shards(b)) == [1]


def test_vector_is_immutable_and_sized() -> None:
    a = VersionVector.zeros(3)
    with pytest.raises(ValueError, match="read-only"):
        a.packed[0] = 5
    with pytest.raises(ValueError, match="shards"):
        a.merge(VersionVector.zeros(4))
    with pytest.raises(ValueError, match="negative"):
        VersionVector(np.array([-1]))


@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 50)), min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 50)), min_size=1, max_size=8),
)
def test_merge_is_the_least_upper_bound(
    xs: list[tuple[int, int]], ys: list[tuple[int, int]]
) -> None:
    n = min(len(xs), len(ys))
    a, b = vv(*xs[:n]), vv(*ys[:n])
    m = a.merge(b)
    assert m.dominates(a) and m.dominates(b)
    assert m == b.merge(a)
    assert (a.compare(b) is Order.CONCURRENT) == (m not in (a, b))
