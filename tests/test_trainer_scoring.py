"""Numpy scoring over the store (what nodes serve) equals the torch model's scores."""

from __future__ import annotations

import numpy as np
import pytest
from test_trainer_support import small_config, store_trainer

from p2prec.model.scoring import ModelUnavailable, item_matrix, score_items, score_pairs, top_k
from p2prec.model.store import ParamStore
from p2prec.trainer.batch import Batch
from p2prec.trainer.runtime import Trainer


def trained(steps: int = 30) -> tuple[Trainer, ParamStore, Batch]:
    trainer, head = store_trainer(small_config())
    for _ in range(steps):
        trainer.train_step()
    trainer.publish(force_dense=True)
    sample = trainer.source.next_batch()
    assert sample is not None
    return trainer, head.store, sample


def test_numpy_scores_equal_torch_scores_on_the_same_parameters() -> None:
    trainer, store, sample = trained()
    unknown = np.array([-5, 123456789], dtype=np.int64)  # never seen: zero rows on both sides
    users = np.concatenate([sample.users, unknown, sample.users[:2]])
    items = np.concatenate([sample.items, sample.items[:2], unknown])
    torch_logits = trainer.learner.logits(users, items)
    scores = score_pairs(store, users, items)
    np.testing.assert_allclose(scores.logits, torch_logits, rtol=1e-5, atol=1e-5)
    assert not scores.user_found[-4:-2].any() and not scores.item_found[-2:].any()
    assert np.std(scores.logits) > 0.01  # a trained model, not a constant


def test_top_k_is_the_best_of_all_items_in_one_matmul() -> None:
    _trainer, store, sample = trained()
    user = int(sample.users[0])
    keys, _rows = item_matrix(store)
    everything = score_items(store, user, keys)
    ranking = top_k(store, user, 10)
    assert ranking.user_found and ranking.items.size == 10
    best = keys[np.argsort(-everything.logits, kind="stable")[:10]]
    assert set(ranking.items.tolist()) == set(best.tolist())
    assert (np.diff(ranking.logits) <= 0).all()
    np.testing.assert_allclose(
        ranking.logits, score_items(store, user, ranking.items).logits, rtol=1e-5, atol=1e-6
    )
    assert top_k(store, user, 10**6).items.size == keys.size


def test_an_unknown_user_is_reported_for_the_popular_fallback() -> None:
    _trainer, store, _sample = trained(5)
    ranking = top_k(store, -1, 5)
    assert not ranking.user_found and ranking.items.size == 0


def test_validated_reads_score_the_watermark_state() -> None:
    trainer, store, sample = trained(10)
    head = trainer.head
    head.publish(head.validated_head(0))
    at_watermark = score_pairs(store, sample.users, sample.items).logits
    for _ in range(10):
        trainer.train_step()
    trainer.publish(force_dense=True)
    validated = score_pairs(store, sample.users, sample.items, validated=True)
    fresh = score_pairs(store, sample.users, sample.items)
    np.testing.assert_allclose(validated.logits, at_watermark, rtol=1e-6)
    assert not np.allclose(fresh.logits, at_watermark)


def test_a_store_without_dense_tensors_cannot_score() -> None:
    _trainer, store, _sample = trained(0)
    with pytest.raises(ModelUnavailable, match=r"tower\.w1"):
        score_pairs(store, [1], [2])
