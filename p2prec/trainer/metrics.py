"""Ranking and calibration metrics in vectorised numpy (no scikit-learn): AUC and log loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


@dataclass(frozen=True)
class Metrics:
    """Quality of scores on labelled samples (``auc`` is NaN when one class is missing)."""

    auc: float
    logloss: float
    samples: int


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula; tied scores get
    their average rank. NaN when all labels are equal."""
    y = np.asarray(labels).reshape(-1) > 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.size != s.size:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based average rank, sorted order
    rank_sum = float(ranks[y[order]].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def logloss(labels: npt.ArrayLike, logits: npt.ArrayLike) -> float:
    """Mean binary cross-entropy in nats, computed from logits without overflow."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if y.size != z.size:
        raise ValueError(f"{y.size} labels for {z.size} logits")
    if y.size == 0:
        return float("nan")
    # -[y log sigmoid(z) + (1 - y) log sigmoid(-z)] = softplus(z) - y z
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def evaluate(labels: npt.ArrayLike, logits: npt.ArrayLike) -> Metrics:
    y = np.asarray(labels).reshape(-1)
    return Metrics(auc(y, logits), logloss(y, logits), int(y.size))
