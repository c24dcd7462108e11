"""Where the trainer publishes: the head of the lineage.

``DriverHead`` is the real one: the trainer's ``NodeDriver`` (role ``trainer``), which signs
every message and sends it into the mesh. ``StoreHead`` is a bare ``ParamStore`` with an epoch,
for tests and benchmarks that need no mesh; it follows the publisher's rules (a delta must
continue the head; a rollback starts the next epoch and is followed by a validation there).
"""

from __future__ import annotations

from typing import Protocol

from p2prec.core.publisher import Publisher
from p2prec.io.node import NodeDriver, rolled_back_to_watermark
from p2prec.model.store import ParamStore
from p2prec.wire.messages import ParamDelta, Rollback, Validated

Published = ParamDelta | Validated | Rollback


class Head(Protocol):
    @property
    def store(self) -> ParamStore: ...

    @property
    def epoch(self) -> int: ...

    @property
    def shard_groups(self) -> int: ...

    def publish(self, msg: Published) -> None: ...

    def validated_head(self, created_ms: int) -> Validated: ...

    async def validated_head_stepped(self, created_ms: int) -> Validated:
        """``validated_head`` hashed a few shards per loop turn; ``StaleHead`` when the head
        was rolled back meanwhile."""
        ...


class DriverHead:
    """The trainer's ``NodeDriver``: signs, logs to disk, sends one copy per datacenter."""

    def __init__(self, driver: NodeDriver) -> None:
        if not isinstance(driver.replica, Publisher) or driver.signer is None:
            raise ValueError("the trainer publishes through a started driver of role 'trainer'")
        self.driver = driver
        self.publisher: Publisher = driver.replica

    @property
    def store(self) -> ParamStore:
        return self.publisher.store

    @property
    def epoch(self) -> int:
        return self.publisher.fencing.epoch

    @property
    def shard_groups(self) -> int:
        return self.driver.config.mesh.shard_groups

    def publish(self, msg: Published) -> None:
        self.driver.publish(msg)

    def validated_head(self, created_ms: int) -> Validated:
        return self.publisher.validated_head(created_ms)

    async def validated_head_stepped(self, created_ms: int) -> Validated:
        return await self.driver.validated_head(created_ms, attempts=1)


class StoreHead:
    """A head without a mesh (see module docstring); ``published`` keeps every message."""

    def __init__(self, store: ParamStore, shard_groups: int, epoch: int = 1) -> None:
        self._store = store
        self._groups = shard_groups
        self._epoch = epoch
        self.published: list[Published] = []

    @property
    def store(self) -> ParamStore:
        return self._store

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def shard_groups(self) -> int:
        return self._groups

    def publish(self, msg: Published) -> None:
        if isinstance(msg, ParamDelta):
            result = self._store.apply(msg)
            if result.gaps or len(result.applied) != len(msg.shards):
                raise ValueError(f"delta does not continue the head: {result}")
        elif isinstance(msg, Validated):
            if msg.epoch != self._epoch:
                raise ValueError(f"validation of epoch {msg.epoch} in epoch {self._epoch}")
            self._store.validate(msg.vector)
        else:
            if msg.new_epoch != self._epoch + 1:
                raise ValueError(f"rollback must start epoch {self._epoch + 1}")
            self._store.rollback(msg.to)
            self._epoch = msg.new_epoch
        self.published.append(msg)
        if isinstance(msg, Rollback) and rolled_back_to_watermark(self._store, msg):
            self.publish(self.validated_head(msg.created_ms))

    def validated_head(self, created_ms: int) -> Validated:
        return Validated(self._store.vector, self._epoch, created_ms)

    async def validated_head_stepped(self, created_ms: int) -> Validated:
        return self.validated_head(created_ms)


class HeadWrapper:
    """A ``Head`` that passes everything to ``inner``; subclasses add to ``publish``."""

    def __init__(self, inner: Head) -> None:
        self.inner = inner

    @property
    def store(self) -> ParamStore:
        return self.inner.store

    @property
    def epoch(self) -> int:
        return self.inner.epoch

    @property
    def shard_groups(self) -> int:
        return self.inner.shard_groups

    def publish(self, msg: Published) -> None:
        self.inner.publish(msg)

    def validated_head(self, created_ms: int) -> Validated:
        return self.inner.validated_head(created_ms)

    async def validated_head_stepped(self, created_ms: int) -> Validated:
        return await self.inner.validated_head_stepped(created_ms)
