"""What every query of one model state shares, computed once per state: the dense user tower
and the matrix of every item's row (looking up every item was ~70% of a recommendation).

A state is keyed by the store's version vector and watermark: every change of content (apply,
catch-up, rollback) moves the vector, and validated reads follow the watermark.

The latest state changes with every applied delta (about 30 a second), and its view is built by
the first query after the change, on the event loop, right after the apply that held the loop:
a full rebuild (every item looked up again, 0.3-0.5 ms under load with 1,200 items) lengthened
every apply stall as requests saw it. The latest item matrix is therefore updated in place from
the rows whose slot or version changed (``LatestItems``); validated reads, whose state moves
only with the watermark, rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p2prec.model import scoring
from p2prec.model.store import ParamStore
from p2prec.model.table import EmbeddingTable


@dataclass(frozen=True, eq=False)
class ModelView:
    """The read-only parts of one model state that scoring needs."""

    tower: scoring.UserTower
    item_keys: scoring.I64
    item_rows: scoring.F32


def state_key(store: ParamStore, validated: bool) -> tuple[int, bool, bytes, bytes]:
    return (id(store), validated, store.vector_view.tobytes(), store.watermark.packed.tobytes())


class LatestItems:
    """The latest item matrix of one store (``scoring.item_matrix(store)``: keys sorted, one
    float32 row each), kept up to date incrementally.

    A refresh reads the item index (keys and current slots, in index order) and the version of
    each current slot. While the key set and the index order stay the same (no key added or
    removed, no rehash), only the rows whose slot or version changed are copied, into the same
    arrays: the matrix returned by an earlier ``refresh`` changes with it. A row's content is
    fixed by its (key, version) (deltas carry state, versions never repeat with other content);
    comparing the slot too catches any slot recycled under a new row. Anything else (another
    store, keys added or gone, a rehash): a full rebuild.
    """

    def __init__(self) -> None:
        self._table: object = None
        self._index_keys: scoring.I64 = np.zeros(0, np.int64)  # keys in index order, as last seen
        self._order: scoring.I64 = np.zeros(0, np.int64)  # index order -> sorted order
        self._slots: scoring.I64 = np.zeros(0, np.int64)  # per sorted key
        self._versions: scoring.I64 = np.zeros(0, np.int64)  # per sorted key
        self.keys: scoring.I64 = np.zeros(0, np.int64)
        self.rows: scoring.F32 = np.zeros((0, 0), np.float32)
        self.rebuilds = 0  # full rebuilds (for tests)
        self.rows_copied = 0  # rows copied by incremental refreshes (for tests)

    def refresh(self, store: ParamStore) -> tuple[scoring.I64, scoring.F32]:
        table = store.tables[scoring.ITEM_TABLE]
        index_keys, index_slots = table.live_slots()
        if table is not self._table or not np.array_equal(index_keys, self._index_keys):
            return self._rebuild(table, index_keys, index_slots)
        slots = index_slots[self._order]
        versions = table.slot_version[slots]
        changed = np.flatnonzero((slots != self._slots) | (versions != self._versions))
        if changed.size:
            self.rows[changed] = table.rows_at(slots[changed])
            self._slots[changed] = slots[changed]
            self._versions[changed] = versions[changed]
            self.rows_copied += int(changed.size)
        return self.keys, self.rows

    def _rebuild(
        self, table: EmbeddingTable, index_keys: scoring.I64, index_slots: scoring.I64
    ) -> tuple[scoring.I64, scoring.F32]:
        order = np.argsort(index_keys, kind="stable")
        slots = index_slots[order]
        self._table = table
        self._index_keys = index_keys
        self._order = order
        self._slots = slots
        self._versions = table.slot_version[slots]
        self.keys = index_keys[order]
        self.rows = np.asarray(table.rows_at(slots), dtype=np.float32)  # a copy, C-ordered
        self.rebuilds += 1
        return self.keys, self.rows


class ModelViews:
    """The ``ModelView`` of the latest and of the validated state, rebuilt when they change.

    A latest view shares its item matrix with ``LatestItems``: it is valid until the next
    ``view`` call (queries use it synchronously, never across an ``await``)."""

    def __init__(self) -> None:
        self._views: dict[bool, tuple[tuple[int, bool, bytes, bytes], ModelView]] = {}
        self.latest_items = LatestItems()

    def view(self, store: ParamStore, validated: bool) -> ModelView:
        """Raises ``scoring.ModelUnavailable`` while the state has no complete tower."""
        key = state_key(store, validated)
        cached = self._views.get(validated)
        if cached is not None and cached[0] == key:
            return cached[1]
        tower = scoring.tower(store, validated)
        if validated:
            keys, rows = scoring.item_matrix(store, validated)
        else:
            keys, rows = self.latest_items.refresh(store)
        view = ModelView(tower, keys, rows)
        self._views[validated] = (key, view)
        return view


def best_indices(logits: scoring.F32, k: int) -> scoring.I64:
    """Indices of the ``k`` largest logits, largest first (ties: lower index first), as
    ``scoring.top_k`` orders them."""
    part = np.argpartition(-logits, k - 1)[:k] if k < logits.size else np.arange(logits.size)
    order = np.lexsort((part, -logits[part]))
    return part[order].astype(np.int64)


def rank(view: ModelView, user_rows: np.ndarray, k: int) -> scoring.Ranking:
    """The ``k`` best items for one user's row (a zero row: a brand-new user)."""
    if view.item_keys.size == 0:
        return scoring.Ranking(view.item_keys, np.zeros(0, np.float32), True)
    user_vector = view.tower.user_vectors(user_rows)[0]
    logits = (view.item_rows @ user_vector + np.float32(view.tower.bias)).astype(np.float32)
    best = best_indices(logits, k)
    return scoring.Ranking(view.item_keys[best], logits[best], True)
