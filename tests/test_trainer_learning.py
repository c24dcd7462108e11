"""Online training on the synthetic stream beats the untrained model on held-out samples, as
served by numpy from the published store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_trainer_support import small_config, store_trainer

from p2prec.model.scoring import ITEM_TABLE, USER_TABLE, score_pairs
from p2prec.trainer.learner import OnlineLearner, resolve_device
from p2prec.trainer.metrics import auc


def test_training_improves_held_out_auc_over_the_untrained_model() -> None:
    trainer, head = store_trainer(small_config())
    for _ in range(300):
        trainer.train_step()
    trainer.publish(force_dense=True)
    held = trainer.holdout.samples()  # never trained on
    assert len(held) > 1000
    untrained = OnlineLearner(trainer.learner.spec, torch.device("cpu"))
    for table, ids in ((USER_TABLE, held.users), (ITEM_TABLE, held.items)):
        untrained.tables[table].rows_of(np.unique(ids))  # random initial rows, as at birth
    before = auc(held.labels, untrained.logits(held.users, held.items))
    after = auc(held.labels, score_pairs(head.store, held.users, held.items).logits)
    assert before < 0.6
    assert after > before + 0.1, (before, after)


def test_device_auto_is_the_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
