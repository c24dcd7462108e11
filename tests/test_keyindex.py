import numpy as np
import pytest

from p2prec.model.keyindex import ABSENT, DuplicateKeys, KeyIndex


def test_matches_a_dict_through_growth_with_extreme_ids() -> None:
    rng = np.random.default_rng(7)
    index = KeyIndex(capacity_hint=4)
    model: dict[int, int] = {}
    extremes = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0, -1, -2])
    for batch in range(30):
        keys = np.unique(
            np.concatenate(
                [
                    rng.integers(-(2**63), 2**63 - 1, 300, dtype=np.int64),
                    rng.integers(0, 50, 20),
                    extremes,
                ]
            )
        )
        pos = index.find_or_insert(keys)
        values = np.arange(keys.size, dtype=np.int64) + batch * 1000
        index.set_values(pos, values)
        model.update(zip(keys.tolist(), values.tolist(), strict=True))
    probe = np.array([*list(model), 12345678901, -98765], dtype=np.int64)
    expected = [model.get(k, ABSENT) for k in probe.tolist()]
    assert index.lookup(probe).tolist() == expected
    assert len(index) == len(model)
    assert index.capacity >= 2 * len(model)


def test_duplicates_are_refused_without_changing_any_value() -> None:
    index = KeyIndex()
    index.set_values(index.find_or_insert(np.array([1, 2, 3])), np.array([10, 20, 30]))
    with pytest.raises(DuplicateKeys):
        index.find_or_insert(np.array([2, 5, 2]))
    with pytest.raises(DuplicateKeys):
        index.find_or_insert(np.array([7, 8, 7]))
    assert index.lookup(np.array([1, 2, 3])).tolist() == [10, 20, 30]
    assert index.lookup(np.array([5, 7, 8])).tolist() == [ABSENT] * 3
    assert sorted(index.items()[0].tolist()) == [1, 2, 3]


def test_absent_keys_keep_their_position() -> None:
    index = KeyIndex()
    pos = index.find_or_insert(np.array([42]))
    assert index.lookup(np.array([42])).tolist() == [ABSENT]
    index.set_values(pos, np.array([9]))
    assert index.items()[0].tolist() == [42]
    index.set_values(pos, np.array([ABSENT]))
    assert index.items()[0].size == 0
    assert index.find(np.array([42])).tolist() == pos.tolist()
