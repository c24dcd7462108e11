"""A poisoned burst is caught by the validator and rolled back: the head's root equals the
root at the last validated version, on the trainer and on a node of the mesh, and training
continues in the new epoch from the rolled-back state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_trainer_support import TrainerProcess, node_config, small_config, store_trainer

from p2prec.core.publisher import StaleHead
from p2prec.io.curve import generate_node_keys
from p2prec.io.node import NodeDriver
from p2prec.model.scoring import ITEM_TABLE, USER_TABLE
from p2prec.model.store import ParamStore
from p2prec.trainer.runtime import Trainer
from p2prec.trainer.validator import Outcome
from p2prec.wire.messages import Validated

VALIDATE_EVERY = 20
DEADLINE_S = 20.0


def train_until_validated(trainer: Trainer, store: ParamStore, validations: int) -> bytes:
    """Train until ``validations`` validations passed in all; the root at the last one."""
    while trainer.counters.validations < validations:
        trainer.train_step()
    assert trainer.counters.steps % VALIDATE_EVERY == 0
    assert store.watermark == store.vector
    return store.root


def poison_until_rolled_back(trainer: Trainer) -> None:
    trainer.poison(VALIDATE_EVERY)  # exactly the steps up to the next validation
    for _ in range(VALIDATE_EVERY):
        trainer.train_step()
    assert trainer.counters.rollbacks == 1
    verdict = trainer.last_verdict
    assert verdict is not None and verdict.outcome is Outcome.FAIL
    assert verdict.head is not None and verdict.baseline is not None
    assert verdict.head.auc < verdict.baseline.auc - trainer.config.rollback_auc_drop_max


def assert_learner_follows_store(trainer: Trainer, store: ParamStore) -> None:
    for table in (USER_TABLE, ITEM_TABLE):
        keys, slots = store.tables[table].live_slots()
        emb = trainer.learner.tables[table]
        assert set(emb.keys().tolist()) == set(keys.tolist())
        np.testing.assert_array_equal(emb.values(keys), store.tables[table].rows[slots])


def test_a_poisoned_burst_is_rolled_back_to_the_validated_root() -> None:
    config = small_config(trainer__validate_every_steps=VALIDATE_EVERY)
    trainer, head = store_trainer(config)
    store = head.store
    root = train_until_validated(trainer, store, 5)
    poison_until_rolled_back(trainer)
    assert store.root == root
    assert head.epoch == 2
    assert_learner_follows_store(trainer, store)
    store.validate_state()
    validations = trainer.counters.validations
    for _ in range(VALIDATE_EVERY):  # training continues in the new epoch and passes again
        trainer.train_step()
    assert trainer.counters.validations == validations + 1
    assert max(v.epoch for v in store.vector) == 2


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not condition():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # polling a condition with a deadline


def test_a_node_of_the_mesh_rolls_back_with_the_trainer(tmp_path: Path) -> None:
    async def body() -> None:
        process = TrainerProcess(tmp_path, trainer__validate_every_steps=VALIDATE_EVERY)
        generate_node_keys(tmp_path / "curve", "n1")
        trainer = await process.start()
        node = NodeDriver(
            node_config(tmp_path, "n1", [f"trainer@{process.addr}"]),
            process.signer.verifier(),
        )
        try:
            await node.start()
            head, replica = trainer.head.store, node.replica
            assert replica is not None
            await until(lambda: len(replica.membership.alive_members()) >= 2, "membership")
            root = train_until_validated(trainer, head, 3)
            await until(lambda: replica.store.root == root, "validated state on the node")
            poison_until_rolled_back(trainer)
            assert head.root == root
            await until(
                lambda: replica.fencing.epoch == 2 and replica.store.root == root,
                "the rollback on the node",
            )
            assert replica.store.vector == head.vector
        finally:
            await node.close()
            await process.close()

    asyncio.run(body())


def test_run_validates_with_the_digests_hashed_in_steps(tmp_path: Path) -> None:
    async def body() -> None:
        process = TrainerProcess(tmp_path, trainer__validate_every_steps=VALIDATE_EVERY)
        trainer = await process.start()

        def at_once(_created_ms: int) -> Validated:
            raise AssertionError("run() hashed the head at once")

        head = process.head
        assert head is not None
        head.validated_head = at_once  # type: ignore[method-assign, assignment]
        try:
            await trainer.run(steps=2 * VALIDATE_EVERY)
            assert trainer.counters.validations == 2
            store = trainer.head.store
            signed = process.driver.replica.fencing.validated if process.driver.replica else None
            assert signed is not None and isinstance(signed.msg, Validated)
            # The last step validated: the head is what was hashed in steps, and the digests
            # are the ones hashed at once for the same content.
            assert store.vector == store.watermark == signed.msg.vector
            assert signed.msg.shard_digests == head.inner.validated_head(0).shard_digests
        finally:
            await process.close()

    asyncio.run(body())


def test_a_rollback_while_the_head_is_hashed_skips_that_validation(tmp_path: Path) -> None:
    async def body() -> None:
        process = TrainerProcess(tmp_path, trainer__validate_every_steps=0)
        trainer = await process.start()
        try:
            for _ in range(VALIDATE_EVERY):
                trainer.train_step()
            trainer.validate()  # a watermark to roll back to
            for _ in range(VALIDATE_EVERY):
                trainer.train_step()
            trainer.publish(force_dense=True)
            stepped = asyncio.create_task(trainer.head.validated_head_stepped(0))
            await asyncio.sleep(0)  # the job has begun and hashed its first shards
            trainer.roll_back()
            with pytest.raises(StaleHead):
                await stepped
        finally:
            await process.close()

    asyncio.run(body())
