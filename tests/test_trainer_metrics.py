"""AUC (rank-based, ties averaged) and log loss against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p2prec.trainer.metrics import auc, evaluate, logloss


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_the_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.3).astype(np.float32)
    scores = np.round(rng.standard_normal(300) + labels, 1)  # rounding makes many ties
    assert auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_auc_extremes_and_one_class() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc(labels, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auc(labels, [1, 1, 1, 1]) == 0.5
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError, match="labels"):
        auc([0, 1], [0.5])


def test_logloss_is_stable_and_matches_the_definition() -> None:
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    logits = np.array([2.0, -1.0, -0.5, 0.3])
    p = 1 / (1 + np.exp(-logits))
    expected = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert logloss(labels, logits) == pytest.approx(expected)
    assert math.isfinite(logloss([1.0, 0.0], [-1000.0, 1000.0]))  # no overflow, no log(0)
    assert logloss([0.0], [0.0]) == pytest.approx(math.log(2))
    metrics = evaluate(labels, logits)
    assert metrics.samples == 4 and metrics.auc == pytest.approx(0.75)
