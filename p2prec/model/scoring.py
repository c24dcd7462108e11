"""Scoring with numpy over a parameter store: what inference nodes serve (they never import
torch), and what the trainer's validator scores.

The model is a two-tower recommender. The item tower is the raw item embedding ``v``; the user
tower is a residual MLP over the user embedding ``u``::

    user_vector(u) = u + relu(u @ w1 + b1) @ w2 + b2
    logit(u, v)    = user_vector(u) . v + bias

so ranking every known item for one user is one matrix-vector product. The torch model
(``p2prec.trainer.model``) computes the same function on the same parameters; the dense
tensors are published under the names in ``DENSE_NAMES``.

Reads come from a ``ParamStore``: the freshest rows, or with
``validated=True`` the rows as of the validation watermark. An unknown user has no row: the
results say so (``user_found``), so the caller can fall back to popular items.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2prec.model.store import ParamStore

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

USER_TABLE = "user"
ITEM_TABLE = "item"
W1, B1, W2, B2, BIAS = "tower.w1", "tower.b1", "tower.w2", "tower.b2", "out.bias"
DENSE_NAMES = (W1, B1, W2, B2, BIAS)


class ModelUnavailable(LookupError):
    """The store holds no (complete) set of dense tensors for this read: nothing to score."""


@dataclass(frozen=True, eq=False)
class UserTower:
    """The dense weights, as float32 numpy arrays."""

    w1: F32  # (dim, hidden)
    b1: F32  # (hidden,)
    w2: F32  # (hidden, dim)
    b2: F32  # (dim,)
    bias: float

    @classmethod
    def from_dense(cls, dense: Mapping[str, npt.NDArray[np.floating]]) -> UserTower:
        missing = [name for name in DENSE_NAMES if name not in dense]
        if missing:
            raise ModelUnavailable(f"dense tensors missing: {', '.join(missing)}")
        w1, b1, w2, b2 = (np.asarray(dense[n], dtype=np.float32) for n in (W1, B1, W2, B2))
        return cls(w1, b1, w2, b2, float(np.asarray(dense[BIAS]).reshape(-1)[0]))

    def user_vectors(self, rows: npt.NDArray[np.floating]) -> F32:
        u = np.asarray(rows, dtype=np.float32)
        hidden = np.maximum(u @ self.w1 + self.b1, np.float32(0))
        out: F32 = u + hidden @ self.w2 + self.b2
        return out


@dataclass(frozen=True, eq=False)
class PairScores:
    """Logits of (user, item) pairs; rows a store lacks score as zero vectors."""

    logits: F32
    user_found: npt.NDArray[np.bool_]
    item_found: npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Ranking:
    """The best items for one user, best first; empty when the user is unknown."""

    items: I64
    logits: F32
    user_found: bool


def tower(source: ParamStore, validated: bool = False) -> UserTower:
    return UserTower.from_dense(source.dense_tensors(validated=validated))


def score_pairs(
    source: ParamStore, users: npt.ArrayLike, items: npt.ArrayLike, validated: bool = False
) -> PairScores:
    """Logit of each ``(users[i], items[i])`` pair."""
    model = tower(source, validated)
    user = source.lookup(USER_TABLE, users, validated=validated)
    item = source.lookup(ITEM_TABLE, items, validated=validated)
    if user.rows.shape[0] != item.rows.shape[0]:
        raise ValueError(f"{user.rows.shape[0]} users for {item.rows.shape[0]} items")
    vectors = model.user_vectors(user.rows)
    logits = np.einsum("ij,ij->i", vectors, item.rows.astype(np.float32)) + np.float32(model.bias)
    return PairScores(logits.astype(np.float32), user.found, item.found)


def score_items(
    source: ParamStore, user: int, items: npt.ArrayLike, validated: bool = False
) -> PairScores:
    """Logits of a list of items for one user."""
    ids = np.asarray(items, dtype=np.int64).reshape(-1)
    return score_pairs(source, np.full(ids.size, user, dtype=np.int64), ids, validated)


def item_matrix(source: ParamStore, validated: bool = False) -> tuple[I64, F32]:
    """Every item the read sees, with its embedding row (one row per key, keys sorted)."""
    keys = source.keys(ITEM_TABLE)
    found = source.lookup(ITEM_TABLE, keys, validated=validated)
    return keys[found.found], found.rows[found.found].astype(np.float32, copy=False)


def top_k(source: ParamStore, user: int, k: int, validated: bool = False) -> Ranking:
    """The ``k`` best items for ``user`` over every item the read sees (one matmul)."""
    model = tower(source, validated)
    row = source.lookup(USER_TABLE, np.array([user], dtype=np.int64), validated=validated)
    if not row.found[0] or k <= 0:
        return Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32), bool(row.found[0]))
    keys, rows = item_matrix(source, validated)
    logits = rows @ model.user_vectors(row.rows)[0] + np.float32(model.bias)
    best = _best(logits, k)
    return Ranking(keys[best], logits[best].astype(np.float32), True)


def _best(logits: F32, k: int) -> I64:
    """Indices of the ``k`` largest logits, largest first (ties: lower index first)."""
    part = np.argpartition(-logits, k - 1)[:k] if k < logits.size else np.arange(logits.size)
    order = np.lexsort((part, -logits[part]))
    return part[order].astype(np.int64)
