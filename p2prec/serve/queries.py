"""Recommend and score from a node's store, latest or as of the validation watermark.

Scores come from ``p2prec.model.scoring`` (numpy). Every answer names the model state that
served it: the epoch, the version-vector summary of what was read (the watermark for
validated reads) and the consistency. An unknown user gets the items the model ranks best for
a brand-new user (a zero embedding through the user tower: the learned popularity prior),
marked ``cold_start``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from p2prec.core.replica import Replica
from p2prec.model import scoring
from p2prec.model.store import ParamStore
from p2prec.serve.cache import ModelViews, rank
from p2prec.serve.params import Consistency


def model_state(replica: Replica, consistency: Consistency) -> dict[str, Any]:
    store = replica.store
    vector = store.watermark if consistency == "validated" else store.vector
    return {
        "epoch": replica.fencing.epoch,
        "vector_summary": vector.summary(),
        "total_versions": vector.total_seq(),
        "consistency": consistency,
    }


def recommend(
    replica: Replica, views: ModelViews, user: int, k: int, consistency: Consistency
) -> dict[str, Any]:
    validated = consistency == "validated"
    store = replica.store
    view = views.view(store, validated)
    row = store.lookup(scoring.USER_TABLE, np.array([user], np.int64), validated=validated)
    found = bool(row.found[0])
    ranking = rank(view, row.rows, k)  # an unknown user's row is zeros: a brand-new user
    return {
        "user": user,
        "items": [
            {"item": int(item), "score": float(score)}
            for item, score in zip(ranking.items, ranking.logits, strict=True)
        ],
        "cold_start": not found,
        "model": model_state(replica, consistency),
    }


def score(
    replica: Replica, user: int, items: list[int], consistency: Consistency
) -> dict[str, Any]:
    validated = consistency == "validated"
    result = scoring.score_items(replica.store, user, np.asarray(items, np.int64), validated)
    found = bool(result.user_found.all()) if items else _user_known(replica.store, user, validated)
    return {
        "user": user,
        "scores": [
            {"item": item, "score": float(logit), "known": bool(known)}
            for item, logit, known in zip(items, result.logits, result.item_found, strict=True)
        ],
        "cold_start": not found,
        "model": model_state(replica, consistency),
    }


def _user_known(store: ParamStore, user: int, validated: bool) -> bool:
    found = store.lookup(scoring.USER_TABLE, np.array([user], np.int64), validated=validated)
    return bool(found.found[0])
