"""The synthetic click stream: seeded, arrivals, trends that rise and fade, drifting interests."""

from __future__ import annotations

import dataclasses

import numpy as np

from p2prec.trainer.stream import StreamSpec, SyntheticStream

SPEC = StreamSpec(
    seed=3, batch_samples=200, samples_per_s=100.0, users_max=300, items_max=80,
    new_users_per_s=2.0, new_items_per_s=1.0, trend_share=0.5, trend_peak_s=20.0,
)  # fmt: skip


def batches(spec: StreamSpec, count: int) -> list[tuple[np.ndarray, ...]]:
    stream = SyntheticStream(spec)
    out: list[tuple[np.ndarray, ...]] = []
    for _ in range(count):
        b = stream.next_batch()
        out.append((b.users, b.items, b.labels, b.times_s))
    return out


def test_equal_seeds_give_equal_batches_and_other_seeds_do_not() -> None:
    one, two = batches(SPEC, 20), batches(SPEC, 20)
    assert all(
        all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        for a, b in zip(one, two, strict=True)
    )
    other = batches(dataclasses.replace(SPEC, seed=4), 1)
    assert not np.array_equal(other[0][1], one[0][1])


def test_users_and_items_keep_arriving_and_time_advances() -> None:
    stream = SyntheticStream(SPEC)
    first = stream.next_batch()
    seen_items = set(first.items.tolist())
    new_items = 0
    for _ in range(100):
        batch = stream.next_batch()
        new_items += len(set(batch.items.tolist()) - seen_items)
        seen_items |= set(batch.items.tolist())
    assert new_items > 20  # ~1 new item per stream second, 200 stream seconds
    assert stream.now_s == 101 * SPEC.batch_samples / SPEC.samples_per_s
    assert len(stream.items) <= SPEC.items_max and len(stream.users) <= SPEC.users_max
    assert (np.diff(batch.times_s) >= 0).all()
    assert 0.05 < float(batch.labels.mean()) < 0.95


def test_a_trending_item_rises_to_its_peak_then_fades() -> None:
    stream = SyntheticStream(SPEC)
    for _ in range(30):
        stream.next_batch()
    trending = np.flatnonzero(stream.items.trending)
    assert trending.size
    item = int(trending[-1])
    born = float(stream.items.born_s[item])
    popularity = []
    for age in (0.1, 0.5, 1.0, 2.0, 6.0):
        stream.now_s = born + age * SPEC.trend_peak_s
        popularity.append(float(stream.item_popularity()[item]))
    assert popularity[0] < popularity[1] < popularity[2]  # rising
    assert popularity[2] > popularity[3] > popularity[4]  # fading
    assert popularity[2] > 5 * popularity[4]


def test_interests_drift() -> None:
    stream = SyntheticStream(SPEC)
    before = stream.users.latent.copy()
    ids = stream.users.ids.copy()
    for _ in range(50):
        stream.next_batch()
    still = np.isin(stream.users.ids, ids)
    after = stream.users.latent[still]
    cosine = np.einsum("ij,ij->i", after, before[np.isin(ids, stream.users.ids)])
    assert np.allclose(np.linalg.norm(after, axis=1), 1.0)
    assert cosine.min() < 0.99  # the users that were drawn moved


def test_state_round_trip_continues_the_same_stream() -> None:
    stream = SyntheticStream(SPEC)
    for _ in range(5):
        stream.next_batch()
    state = stream.state_dict()
    expected = stream.next_batch()
    resumed = SyntheticStream(dataclasses.replace(SPEC, seed=99))
    resumed.load_state_dict(state)
    again = resumed.next_batch()
    assert np.array_equal(again.users, expected.users)
    assert np.array_equal(again.labels, expected.labels)
