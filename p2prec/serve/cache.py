"""What every query of one model state shares, computed once per state: the dense user tower
and the matrix of every item's row (looking up every item was ~70% of a recommendation).

A state is keyed by the store's version vector and watermark: every change of content (apply,
catch-up, rollback) moves the vector, and validated reads follow the watermark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p2prec.model import scoring
from p2prec.model.store import ParamStore


@dataclass(frozen=True, eq=False)
class ModelView:
    """The read-only parts of one model state that scoring needs."""

    tower: scoring.UserTower
    item_keys: scoring.I64
    item_rows: scoring.F32


def state_key(store: ParamStore, validated: bool) -> tuple[int, bool, bytes, bytes]:
    return (id(store), validated, store.vector_view.tobytes(), store.watermark.packed.tobytes())


class ModelViews:
    """The ``ModelView`` of the latest and of the validated state, rebuilt when they change."""

    def __init__(self) -> None:
        self._views: dict[bool, tuple[tuple[int, bool, bytes, bytes], ModelView]] = {}

    def view(self, store: ParamStore, validated: bool) -> ModelView:
        """Raises ``scoring.ModelUnavailable`` while the state has no complete tower."""
        key = state_key(store, validated)
        cached = self._views.get(validated)
        if cached is not None and cached[0] == key:
            return cached[1]
        tower = scoring.tower(store, validated)
        keys, rows = scoring.item_matrix(store, validated)
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
