"""A synthetic delta stream for the trainer's publisher: benchmarks, tests and demos of the
mesh before (or without) the torch trainer. Each step touches ``rows`` random ids per table,
split into one signed delta per shard group, with random dense weights of the served model's
shapes (so nodes can answer queries); every ``validate_every`` steps the head is validated."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2prec.core.publisher import Publisher
from p2prec.core.tree import group_of_shard
from p2prec.io.node import NodeDriver
from p2prec.log import get_logger
from p2prec.model.keyhash import shard_of, table_salt
from p2prec.model.scoring import B1, B2, BIAS, W1, W2
from p2prec.sim.lineage import make_delta
from p2prec.wire.messages import ParamDelta

SYNTHETIC_HIDDEN = 16  # hidden units of the synthetic stream's user tower
MEMBERS_POLL_S = 0.05  # how often the stream looks whether the members it waits for joined

log = get_logger(__name__)


@dataclass(frozen=True)
class SyntheticStream:
    rate_per_s: float = 10.0  # publication steps per second
    rows: int = 100  # ids per table per step
    key_space: int = 1_000_000
    steps: int = 0  # 0: until cancelled
    validate_every: int = 20  # 0: never
    seed: int = 0
    wait_members: int = 0  # publish once the trainer sees this many other members alive
    wait_members_max_s: float = 60.0  # ... or after this long, whichever comes first


def step_deltas(
    publisher: Publisher, stream: SyntheticStream, rng: np.random.Generator, created_ms: int
) -> list[ParamDelta]:
    """One step: fresh rows for random ids, one delta per shard group touched."""
    store, groups = publisher.store, publisher.config.shard_groups
    layout = store.layout
    by_group: dict[int, dict[str, np.ndarray]] = {}
    for table in layout.tables:
        keys = np.unique(rng.integers(0, stream.key_space, stream.rows))
        group = shard_of(table_salt(table), keys, layout.row_shards) % groups
        for g in np.unique(group):
            by_group.setdefault(int(g), {})[table] = keys[group == g]
    deltas = []
    for g in sorted(by_group):
        with_dense = g == group_of_shard(layout.dense_shard, groups)
        delta = make_delta(
            layout, store.vector.packed, by_group[g], with_dense, rng, publisher.fencing.epoch
        )
        dense = tower_tensors(layout.dim, rng) if with_dense else {}
        deltas.append(
            ParamDelta(delta.shards, delta.bases, delta.versions, delta.tables, dense, created_ms)
        )
    return deltas


def tower_tensors(dim: int, rng: np.random.Generator) -> dict[str, npt.NDArray[np.float32]]:
    """Random dense weights of the served model's shapes (``p2prec.model.scoring``), small
    enough to keep scores finite: with them a node of a synthetic mesh can answer queries."""
    shapes = {W1: (dim, SYNTHETIC_HIDDEN), B1: (SYNTHETIC_HIDDEN,), W2: (SYNTHETIC_HIDDEN, dim)}
    shapes |= {B2: (dim,), BIAS: (1,)}
    return {
        name: (0.1 * rng.standard_normal(shape)).astype(np.float32)
        for name, shape in shapes.items()
    }


async def run_stream(driver: NodeDriver, stream: SyntheticStream) -> int:
    """Publish until ``stream.steps`` (or cancellation); returns the steps published."""
    publisher = driver.replica
    if not isinstance(publisher, Publisher):
        raise RuntimeError("the synthetic stream runs on the trainer's publisher")
    rng = np.random.default_rng(stream.seed)
    loop = asyncio.get_running_loop()
    await _members_joined(driver, stream)
    start, step = loop.time(), 0
    validating: asyncio.Task[None] | None = None
    try:
        while stream.steps == 0 or step < stream.steps:
            created_ms = int(time.time() * 1000)  # wall clock, as ParamDelta.created_ms says
            for delta in step_deltas(publisher, stream, rng, created_ms):
                driver.publish(delta)
            step += 1
            due = stream.validate_every and step % stream.validate_every == 0
            if due and (validating is None or validating.done()):  # one at a time, else skip
                validating = asyncio.create_task(_validate(driver, created_ms))
            await asyncio.sleep(max(0.0, start + step / stream.rate_per_s - loop.time()))
        if validating is not None:
            await validating  # the last validation lands before the stream reports its end
    finally:
        if validating is not None and not validating.done():
            validating.cancel()
    return step


async def _members_joined(driver: NodeDriver, stream: SyntheticStream) -> None:
    """Wait until the trainer's view holds ``stream.wait_members`` other members alive (or
    ``wait_members_max_s`` passed): deltas published before a member is known do not reach
    it through its tree, it fetches them later by catch-up (seconds under load)."""
    if stream.wait_members <= 0:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + stream.wait_members_max_s
    while (alive := _others_alive(driver)) < stream.wait_members and loop.time() < deadline:
        await asyncio.sleep(MEMBERS_POLL_S)
    joined = alive >= stream.wait_members
    event = "synthetic_stream_started" if joined else "synthetic_stream_gave_up_waiting"
    log.info(event, members_alive=alive, members_wanted=stream.wait_members)


def _others_alive(driver: NodeDriver) -> int:
    replica, own = driver.replica, driver.config.node.id
    if replica is None:
        return 0
    return sum(m.node_id != own for m in replica.membership.alive_members())


async def _validate(driver: NodeDriver, created_ms: int) -> None:
    """Validate the head as of now, hashed in steps while the stream goes on publishing."""
    driver.publish(await driver.validated_head(created_ms))
