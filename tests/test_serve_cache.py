"""The per-state model views of the HTTP API (p2prec.serve.cache): the incrementally updated
latest item matrix must always equal a full ``scoring.item_matrix`` of the store."""

from __future__ import annotations

import dataclasses

import numpy as np

from p2prec.io.synthetic import tower_tensors
from p2prec.model import scoring
from p2prec.model.layout import StoreLayout
from p2prec.model.store import ParamStore
from p2prec.serve.cache import LatestItems, ModelViews
from p2prec.sim.lineage import make_delta

LAYOUT = StoreLayout(row_shards=8, dim=4, tables=("user", "item"), dtype="float32")


def step(store: ParamStore, rng: np.random.Generator, items: np.ndarray, dense: bool) -> None:
    keys = {"user": np.array([1, 2], np.int64), "item": np.asarray(items, np.int64)}
    delta = make_delta(LAYOUT, store.vector.packed, keys, dense, rng, 1)
    if dense:
        delta = dataclasses.replace(delta, dense=tower_tensors(LAYOUT.dim, rng))
    store.apply(delta)


def assert_matches(views: ModelViews, store: ParamStore, validated: bool = False) -> None:
    view = views.view(store, validated)
    keys, rows = scoring.item_matrix(store, validated)
    np.testing.assert_array_equal(view.item_keys, keys)
    np.testing.assert_array_equal(view.item_rows, rows)
    assert view.item_rows.dtype == np.float32


def new_store() -> tuple[ParamStore, np.random.Generator]:
    store = ParamStore(LAYOUT)
    rng = np.random.default_rng(7)
    step(store, rng, np.arange(100, 140), True)
    return store, rng


def test_updates_of_known_items_copy_only_their_rows() -> None:
    store, rng = new_store()
    views = ModelViews()
    assert_matches(views, store)
    for first in range(100, 136, 4):
        step(store, rng, np.arange(first, first + 3), False)
        assert_matches(views, store)
    assert views.latest_items.rebuilds == 1
    assert views.latest_items.rows_copied == 9 * 3


def test_new_items_rebuild() -> None:
    store, rng = new_store()
    views = ModelViews()
    assert_matches(views, store)
    step(store, rng, np.array([7, 120, 500]), False)  # two new keys, one known
    assert_matches(views, store)
    assert views.latest_items.rebuilds == 2


def test_rollback_restores_the_older_rows() -> None:
    store, rng = new_store()
    before = store.vector
    views = ModelViews()
    step(store, rng, np.arange(100, 110), False)
    assert_matches(views, store)
    store.rollback(before)
    assert_matches(views, store)
    step(store, rng, np.arange(105, 115), False)
    assert_matches(views, store)


def test_validated_view_follows_the_watermark() -> None:
    store, rng = new_store()
    store.validate(store.vector)
    views = ModelViews()
    step(store, rng, np.array([100, 101, 900]), False)
    assert_matches(views, store, validated=True)
    assert_matches(views, store)
    store.validate(store.vector)
    assert_matches(views, store, validated=True)


def test_another_store_rebuilds() -> None:
    items = LatestItems()
    first, _ = new_store()
    second, rng = new_store()
    step(second, rng, np.arange(100, 104), False)
    for store in (first, second, first):
        keys, rows = items.refresh(store)
        expected_keys, expected_rows = scoring.item_matrix(store)
        np.testing.assert_array_equal(keys, expected_keys)
        np.testing.assert_array_equal(rows, expected_rows)
    assert items.rebuilds == 3
