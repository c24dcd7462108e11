"""Shared set-up of the trainer tests (no tests here): small configs, a trainer over a bare
store, and a trainer publishing through a real ``NodeDriver`` (role ``trainer``)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2prec.config import Config, load_config
from p2prec.io.curve import generate_node_keys
from p2prec.io.node import NodeDriver, store_layout
from p2prec.model.store import ParamStore
from p2prec.trainer.head import DriverHead, Head, HeadWrapper, Published, StoreHead
from p2prec.trainer.runtime import Trainer, build_trainer
from p2prec.wire.messages import ParamDelta
from p2prec.wire.signing import Signer

torch.set_num_threads(1)

SMALL: dict[str, Any] = {
    "store.dim": 8,
    "store.row_shards": 8,
    "mesh.shard_groups": 2,
    "trainer.device": "cpu",
    "trainer.hidden_units": 16,
    "trainer.batch_samples": 128,
    "trainer.samples_per_s_max": 0,
    "trainer.publish_interval_s": 0,
    "trainer.validate_every_steps": 0,
    "trainer.holdout_share": 0.1,
    "trainer.holdout_samples_max": 2048,
    "trainer.stream_users_max": 400,
    "trainer.stream_items_max": 120,
    "trainer.stream_samples_per_s": 200.0,
    "trainer.stream_new_items_per_s": 0.5,
    "trainer.poison_popular_items": 30,
}


def small_config(tmp: Path | None = None, **overrides: Any) -> Config:
    values = dict(SMALL)
    if tmp is not None:
        values.update(
            {
                "node.id": "trainer",
                "node.role": "trainer",
                "node.data_dir": str(tmp / "state" / "trainer"),
                "keys.curve_dir": str(tmp / "curve"),
                "keys.trainer_public_key": str(tmp / "trainer.pub"),
                "keys.trainer_signing_key": str(tmp / "trainer.key"),
            }
        )
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config("local", values)


def fixed_clock() -> Any:
    """A created_ms clock that ticks by 1 per call: published bytes depend on the seed only."""
    counter = itertools.count(1_000)
    return lambda: next(counter)


def store_trainer(config: Config) -> tuple[Trainer, StoreHead]:
    """A trainer publishing into a bare store (no mesh), with a deterministic clock."""
    head = StoreHead(ParamStore(store_layout(config)), config.mesh.shard_groups)
    trainer = build_trainer(config, head, checkpoint=False)
    trainer.clock_ms = fixed_clock()
    return trainer, head


class TrainerProcess:
    """The trainer's driver and trainer in this process, keys and state under ``tmp``."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        self.config = small_config(tmp, **overrides)
        signing_key = tmp / "trainer.key"
        if not signing_key.exists():
            signer = Signer.generate()
            signer.save(signing_key)
            generate_node_keys(tmp / "curve", "trainer")
        self.signer = Signer.load(signing_key)
        self.driver = NodeDriver(self.config, self.signer.verifier(), self.signer)
        self.trainer: Trainer | None = None
        self.head: RecordingHead | None = None
        self.addr = ""

    async def start(self) -> Trainer:
        self.addr = await self.driver.start()
        self.head = RecordingHead(DriverHead(self.driver))
        self.trainer = build_trainer(self.config, self.head)
        return self.trainer

    async def close(self) -> None:
        if self.trainer is not None:
            self.trainer.checkpoint()
        await self.driver.close()


class RecordingHead(HeadWrapper):
    """A head that keeps every message published through it."""

    def __init__(self, head: Head) -> None:
        super().__init__(head)
        self.published: list[Published] = []

    def publish(self, msg: Published) -> None:
        self.published.append(msg)
        self.inner.publish(msg)


def issued(delta: ParamDelta) -> list[tuple[int, int]]:
    """The (shard, packed version) pairs a delta issues."""
    return list(zip(delta.shards, delta.versions, strict=True))


def table_contents(store: ParamStore, table: str) -> dict[int, np.ndarray]:
    keys, slots = store.tables[table].live_slots()
    return {int(k): store.tables[table].rows[s].copy() for k, s in zip(keys, slots, strict=True)}


def node_config(tmp: Path, node_id: str, seeds: list[str]) -> Config:
    """An inference node of the same small layout, joining through ``seeds``."""
    return small_config(
        tmp,
        node__id=node_id,
        node__role="node",
        node__dc="dc-a",
        node__data_dir=str(tmp / "state" / node_id),
        mesh__seeds=seeds,
    )
