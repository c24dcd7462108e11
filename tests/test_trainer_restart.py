"""A restarted trainer resumes from its checkpoint in a new epoch: no (shard, version) pair is
ever issued twice, versions only rise, and the torch model continues from the published
state."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from test_trainer_support import TrainerProcess, issued, small_config, store_trainer

from p2prec.core.versions import Version
from p2prec.io.node import store_layout
from p2prec.model.scoring import ITEM_TABLE, USER_TABLE
from p2prec.model.store import ParamStore
from p2prec.trainer.head import Published, StoreHead
from p2prec.trainer.runtime import Trainer, build_trainer
from p2prec.wire.messages import ParamDelta, Rollback, Validated

SETTINGS: dict[str, Any] = {
    "trainer__validate_every_steps": 20,
    "trainer__checkpoint_every_steps": 40,
    "trainer__dense_every_steps": 4,
}


def pairs(published: list[Published]) -> list[tuple[int, int]]:
    return [p for m in published if isinstance(m, ParamDelta) for p in issued(m)]


def assert_learner_follows_store(trainer: Trainer, store: ParamStore) -> None:
    for table in (USER_TABLE, ITEM_TABLE):
        keys, slots = store.tables[table].live_slots()
        np.testing.assert_array_equal(
            trainer.learner.tables[table].values(keys), store.tables[table].rows[slots]
        )


def assert_new_lineage(before: list[Published], after: list[Published]) -> None:
    old, new = pairs(before), pairs(after)
    assert old and new
    assert len(set(old + new)) == len(old) + len(new)  # never issued twice
    highest: dict[int, int] = {}
    for shard, version in old:
        highest[shard] = max(highest.get(shard, 0), version)
    for shard, version in new:
        assert Version.unpack(version).epoch == 2
        assert version > highest.get(shard, 0)  # no node sees a version go back


def test_restart_from_checkpoint_raises_the_epoch_and_never_reissues(tmp_path: Path) -> None:
    async def body() -> None:
        first = TrainerProcess(tmp_path, **SETTINGS)
        trainer = await first.start()
        for _ in range(50):  # checkpoint at step 40, validated at 40, a tail of 10 steps
            trainer.train_step()
        trainer.publish(force_dense=True)
        assert first.head is not None
        before = list(first.head.published)
        await first.driver.close()  # the torch state of steps 41-50 is lost

        second = TrainerProcess(tmp_path, **SETTINGS)
        resumed = await second.start()
        try:
            assert second.head is not None
            store = second.head.store
            assert store.vector.total_seq() > 0  # the store came back from disk
            assert resumed.resume() == "head"  # the disk has no undo below its snapshots
            assert resumed.counters.steps == 40  # the checkpoint's counters and stream
            assert second.head.epoch == 2
            assert isinstance(second.head.published[0], Rollback)
            # The unvalidated tail kept at the head is not announced as validated: only the
            # validator's judgement may do that.
            assert not any(isinstance(m, Validated) for m in second.head.published)
            assert store.watermark != store.vector
            assert_learner_follows_store(resumed, store)
            for _ in range(30):
                resumed.train_step()
            assert_new_lineage(before, second.head.published)
            store.validate_state()
        finally:
            await second.close()
        assert (tmp_path / "state" / "trainer" / "trainer.pt").exists()

    asyncio.run(body())


def test_restart_with_undo_at_hand_resumes_from_the_watermark() -> None:
    config = small_config(**SETTINGS)
    trainer, head = store_trainer(config)
    for _ in range(50):
        trainer.train_step()
    trainer.publish(force_dense=True)
    before, watermark, root_with_tail = list(head.published), head.store.watermark, head.store.root
    assert watermark != head.store.vector  # an unvalidated tail of 10 steps
    restarted = build_trainer(config, head, checkpoint=False)  # the store kept its undo
    assert restarted.resume() == "watermark"
    assert head.store.vector == watermark and head.epoch == 2
    assert head.store.root != root_with_tail
    assert_learner_follows_store(restarted, head.store)
    for _ in range(20):
        restarted.train_step()
    assert_new_lineage(before, head.published[len(before) :])


def test_a_checkpoint_without_its_store_keeps_no_unpublished_rows(tmp_path: Path) -> None:
    config = small_config(tmp_path, **SETTINGS)
    first = build_trainer(config, StoreHead(ParamStore(store_layout(config)), 2))
    for _ in range(10):
        first.train_step()
    first.checkpoint()
    second = build_trainer(config, StoreHead(ParamStore(store_layout(config)), 2))
    assert second.resume() == "fresh"
    assert second.counters.steps == 10  # the checkpoint's stream position and counters
    assert all(len(emb) == 0 for emb in second.learner.tables.values())
