"""Delta extraction: a step's deltas hold exactly the rows it touched (against a full-table
diff), continue the head's lineage shard by shard, and are a function of the seed alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from test_trainer_support import small_config, store_trainer, table_contents

from p2prec.core.versions import Version
from p2prec.model.keyhash import shard_of, table_salt
from p2prec.model.layout import StoreLayout
from p2prec.model.scoring import DENSE_NAMES, ITEM_TABLE, USER_TABLE
from p2prec.trainer.extract import TouchedRows, build_deltas, next_versions
from p2prec.trainer.runtime import Trainer
from p2prec.wire.codec import encode
from p2prec.wire.messages import ParamDelta


def learner_contents(trainer: Trainer, table: str) -> dict[int, np.ndarray]:
    emb = trainer.learner.tables[table]
    keys = emb.keys()
    return {int(k): r for k, r in zip(keys, emb.values(keys), strict=True)}


def changed(before: dict[int, np.ndarray], after: dict[int, np.ndarray]) -> set[int]:
    return {k for k, row in after.items() if k not in before or not np.array_equal(row, before[k])}


def step_deltas(trainer: Trainer, head_published: Sequence[object]) -> list[ParamDelta]:
    count = len(head_published)
    assert trainer.train_step()
    return [m for m in head_published[count:] if isinstance(m, ParamDelta)]


def test_a_delta_holds_exactly_the_rows_its_step_touched() -> None:
    trainer, head = store_trainer(small_config(trainer__dense_every_steps=3))
    for _ in range(5):
        trainer.train_step()
    for _ in range(6):
        torch_before = {t: learner_contents(trainer, t) for t in (USER_TABLE, ITEM_TABLE)}
        store_before = {t: table_contents(head.store, t) for t in (USER_TABLE, ITEM_TABLE)}
        deltas = step_deltas(trainer, head.published)
        for table in (USER_TABLE, ITEM_TABLE):
            sent = {int(k) for d in deltas if table in d.tables for k in d.tables[table].keys}
            torch_after = learner_contents(trainer, table)
            store_after = table_contents(head.store, table)
            assert sent == changed(torch_before[table], torch_after)  # full torch-table diff
            assert sent == changed(store_before[table], store_after)  # full store-table diff
            for delta in deltas:
                if table in delta.tables:
                    rows = delta.tables[table]
                    expected = np.stack([torch_after[int(k)] for k in rows.keys])
                    np.testing.assert_array_equal(rows.rows, expected)
    head.store.validate_state()


def test_deltas_continue_the_lineage_one_per_shard_group() -> None:
    config = small_config(trainer__dense_every_steps=2)
    trainer, head = store_trainer(config)
    layout, groups = head.store.layout, config.mesh.shard_groups
    dense_seen = 0
    for _ in range(6):
        before = head.store.vector.packed.copy()
        deltas = step_deltas(trainer, head.published)
        assert len({d.shards[0] % groups for d in deltas}) == len(deltas)
        for delta in deltas:
            assert list(delta.shards) == sorted(set(delta.shards))
            assert {s % groups for s in delta.shards} == {delta.shards[0] % groups}
            for shard, base, version in zip(delta.shards, delta.bases, delta.versions, strict=True):
                assert base == before[shard]
                assert Version.unpack(version) == Version.unpack(base).next(1)
            step = dict(zip(delta.shards, delta.versions, strict=True))
            for name, rows in delta.tables.items():
                shards = shard_of(table_salt(name), rows.keys, layout.row_shards)
                assert rows.versions.tolist() == [step[int(s)] for s in shards]
            if delta.dense:
                dense_seen += 1
                assert layout.dense_shard in delta.shards
                assert set(delta.dense) == set(DENSE_NAMES)
    assert dense_seen == 3  # every second step


def test_next_versions_enter_the_new_epoch() -> None:
    vector = np.array([Version(1, 5).packed, Version(1, 7).packed, 0], dtype=np.int64)
    touched = np.array([True, False, True])
    after = next_versions(vector, touched, 2)
    assert [Version.unpack(v) for v in after] == [Version(2, 6), Version(1, 7), Version(2, 1)]
    with pytest.raises(ValueError, match="older than the head"):
        next_versions(np.array([Version(3, 1).packed]), np.array([True]), 2)


def test_build_deltas_without_rows_or_dense_builds_nothing() -> None:
    layout = StoreLayout(row_shards=4, dim=2)
    vector = np.zeros(layout.n_shards, dtype=np.int64)
    assert build_deltas(layout, 2, vector, 1, {}, {}) == []
    keys = np.array([5, 9], dtype=np.int64)
    rows = TouchedRows(keys, np.ones((2, 2), dtype=np.float64))
    deltas = build_deltas(layout, 2, vector, 1, {"user": rows}, {})
    assert sum(len(d.tables["user"]) for d in deltas) == 2
    assert all(d.tables["user"].rows.dtype == np.float32 for d in deltas)


def published_bytes(seed: int, steps: int) -> list[bytes]:
    config = small_config(
        trainer__seed=seed, trainer__validate_every_steps=5, trainer__dense_every_steps=3
    )
    trainer, head = store_trainer(config)
    trainer.poison(4)
    for _ in range(steps):
        trainer.train_step()
    return [b"".join(bytes(f) for f in encode(msg, None)) for msg in head.published]


def test_equal_seeds_publish_byte_identical_messages() -> None:
    one, two = published_bytes(7, 15), published_bytes(7, 15)
    assert len(one) > 15
    assert one == two
    assert published_bytes(8, 15)[:3] != one[:3]
