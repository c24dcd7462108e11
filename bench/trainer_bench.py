"""Trainer benchmark: the cost of publishing, the cost of validation, the value of freshness.

    python bench/trainer_bench.py [--quick]

All on the CPU, one thread for torch, one process and one asyncio loop; the trainer publishes
through its real ``NodeDriver`` (role trainer: encode, Ed25519 sign, publisher store apply,
message log on disk) on CURVE sockets on 127.0.0.1. Figures, same run:

1. Throughput, samples trained per second of the training loop over the same pre-generated
   batches (stream generation excluded from both): training alone (torch step only) against
   the trainer loop publishing through the driver (extraction + signing + publishing), with
   no mesh members (no sends), with publications coalesced every ``publish_interval_s`` and
   every step; then with validation on cadence. Ratio = with publishing / the same trainer loop
   with publishing off (``publish_interval_s`` = 60 s: one publication, at the first step).
2. ``Publisher.validated_head()`` (hashes every shard's canonical snapshot) against the rows
   held, and one validation by the validator (numpy scoring of the held-out window).
3. Freshness: AUC on impressions of items that first appeared in the last 60 s of stream
   time, scored before they are trained on (progressive validation), by a node of the mesh
   (deltas) and by the same model refreshed by a full checkpoint (snapshot of every shard)
   every 60 s of stream time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2prec.config import Config, load_config
from p2prec.io.curve import generate_node_keys
from p2prec.io.node import NodeDriver
from p2prec.log import configure_logging
from p2prec.model.scoring import score_pairs
from p2prec.model.snapshot import restore_shard, snapshot_shard
from p2prec.model.store import ParamStore
from p2prec.trainer.batch import Batch
from p2prec.trainer.extract import TouchedRows, build_deltas
from p2prec.trainer.head import DriverHead
from p2prec.trainer.learner import LearnerSpec, OnlineLearner
from p2prec.trainer.metrics import auc
from p2prec.trainer.runtime import Trainer, build_trainer
from p2prec.trainer.stream import StreamSpec, SyntheticStream
from p2prec.wire.signing import Signer

DIM = 32
FRESH_WINDOW_S = 60.0  # "items that appeared in the last minute", stream time
CHECKPOINT_EVERY_S = 60.0  # the baseline's full refresh, stream time
DEADLINE_S = 30.0


def make_config(tmp: Path, node_id: str, role: str, seeds: list[str], **extra: Any) -> Config:
    values: dict[str, Any] = {
        "node.id": node_id,
        "node.role": role,
        "node.data_dir": str(tmp / "state" / node_id),
        "mesh.seeds": seeds,
        "store.dim": DIM,
        "store.initial_rows": 65536,
        "keys.curve_dir": str(tmp / "curve"),
        "keys.trainer_public_key": str(tmp / "trainer.pub"),
        "trainer.device": "cpu",
        "trainer.samples_per_s_max": 0,
        "trainer.validate_every_steps": 0,
    }
    values.update(extra)
    return load_config("local", values)


@dataclass
class Mesh:
    trainer: Trainer
    driver: NodeDriver
    node: NodeDriver | None


@asynccontextmanager
async def mesh(tmp: Path, with_node: bool, **extra: Any) -> AsyncIterator[Mesh]:
    """The trainer's driver and trainer (and one node that joined it), closed on exit."""
    signer = Signer.generate()
    for name in ("trainer", "n1"):
        if not (tmp / "curve" / f"{name}.key").exists():
            generate_node_keys(tmp / "curve", name)
    driver = NodeDriver(
        make_config(tmp, "trainer", "trainer", [], **extra), signer.verifier(), signer
    )
    addr = await driver.start()
    node = None
    try:
        trainer = build_trainer(driver.config, DriverHead(driver), checkpoint=False)
        if with_node:
            config = make_config(tmp, "n1", "node", [f"trainer@{addr}"], **extra)
            node = NodeDriver(config, signer.verifier())
            await node.start()
            await until(lambda: len(driver.replica.membership.alive_members()) >= 2)  # type: ignore[union-attr]
        yield Mesh(trainer, driver, node)
    finally:
        if node is not None:
            await node.close()
        await driver.close()


async def until(condition: Any) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not condition():
        if loop.time() > end:
            raise TimeoutError("mesh did not get ready")
        await asyncio.sleep(0.01)


class Replay:
    """A ``BatchSource`` over pre-generated batches."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches
        self.position = 0

    def next_batch(self) -> Batch | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


# --- 1. throughput --------------------------------------------------------------------------


def stream_batches(config: Config, count: int) -> list[Batch]:
    stream = SyntheticStream(StreamSpec.from_config(config.trainer))
    return [stream.next_batch() for _ in range(count)]


def train_only(config: Config, batches: list[Batch]) -> float:
    """Samples/s of the torch step alone (same batches, same split share dropped)."""
    tc = config.trainer
    learner = OnlineLearner(LearnerSpec(DIM, tc.hidden_units, seed=tc.seed), torch.device("cpu"))
    rng = np.random.default_rng(0)
    kept = [b.take(rng.random(len(b)) >= tc.holdout_share) for b in batches]
    start = time.perf_counter()
    for batch in kept:
        learner.step(batch)
    return sum(len(b) for b in kept) / (time.perf_counter() - start)


async def train_and_publish(tmp: Path, batches: list[Batch], **extra: Any) -> dict[str, float]:
    async with mesh(tmp, with_node=False, **extra) as m:
        m.trainer.source = Replay(batches)
        start = time.perf_counter()
        while m.trainer.train_step():
            pass
        elapsed = time.perf_counter() - start  # the last, partial interval is not published
        c = m.trainer.counters
        return {
            "samples_per_s": c.samples_trained / elapsed,
            "deltas_per_s": c.deltas / elapsed,
            "rows_per_delta": c.rows_published / max(1, c.deltas),
        }


MODES: list[tuple[str, dict[str, Any] | None]] = [
    ("torch step alone", None),
    ("trainer loop, publishing off", {"trainer.publish_interval_s": 60.0}),
    ("train + publish, coalesced 50 ms", {"trainer.publish_interval_s": 0.05}),
    ("train + publish, every step", {"trainer.publish_interval_s": 0.0}),
    (
        "train + publish 50 ms + validate/100 steps",
        {"trainer.publish_interval_s": 0.05, "trainer.validate_every_steps": 100},
    ),
]


async def throughput(tmp: Path, steps: int, repeats: int) -> None:
    """Every mode ``repeats`` times, interleaved; the best run of each (the least disturbed
    by other processes on the host)."""
    config = make_config(tmp, "trainer", "trainer", [])
    batches = stream_batches(config, steps + 20)
    train_only(config, batches[:20])  # warm-up: torch's first steps are slow
    batches = batches[20:]
    best: dict[str, dict[str, float]] = {}
    for repeat in range(repeats):
        for i, (name, extra) in enumerate(MODES):
            if extra is None:
                figures = {"samples_per_s": train_only(config, batches)}
            else:
                figures = await train_and_publish(tmp / f"r{repeat}m{i}", batches, **extra)
            if figures["samples_per_s"] > best.get(name, {}).get("samples_per_s", 0.0):
                best[name] = figures
    _print_throughput(best, steps, repeats, config.trainer.batch_samples)


def _print_throughput(
    best: dict[str, dict[str, float]], steps: int, repeats: int, batch: int
) -> None:
    torch_only = best[MODES[0][0]]["samples_per_s"]
    base = best[MODES[1][0]]["samples_per_s"]
    print(f"\n1. Throughput, {steps} steps of {batch} samples, dim {DIM}, best of {repeats}")
    print(f"{'mode':44} {'samples/s':>10} {'ratio':>6} {'vs torch':>8} {'deltas/s':>9} "
          f"{'rows/delta':>10}")  # fmt: skip
    for name, _extra in MODES:
        figures = best[name]
        rate = figures["samples_per_s"]
        tail = ""
        if figures.get("deltas_per_s"):
            tail = f"{figures['deltas_per_s']:9.0f} {figures['rows_per_delta']:10.0f}"
        print(f"{name:44} {rate:10.0f} {rate / base:6.2f} {rate / torch_only:8.2f} {tail}")
    print("ratio: against the trainer loop with publishing off; vs torch: against the step alone")


# --- 2. validation cost ---------------------------------------------------------------------


async def validation_cost(tmp: Path, steps: int, bulk_rows: tuple[int, ...]) -> None:
    async with mesh(tmp, with_node=False, **{"trainer.publish_interval_s": 0.05}) as m:
        for _ in range(steps):
            m.trainer.train_step()
        m.trainer.publish(force_dense=True)
        publisher = DriverHead(m.driver).publisher
        store = publisher.store
        rows = sum(store.row_count(t) for t in store.layout.tables)
        start = time.perf_counter()
        publisher.validated_head()
        head_s = time.perf_counter() - start
        start = time.perf_counter()
        m.trainer.validate()
        judge_s = time.perf_counter() - start
    print("\n2. Validation cost")
    print(f"one validation (publish, score {m.trainer.config.holdout_samples_max} held-out "
          f"samples twice, Validated): {judge_s * 1e3:.1f} ms")  # fmt: skip
    print(f"{'Publisher.validated_head()':34} {'rows held':>10} {'ms':>8} {'ns/row':>7}")
    print(f"{'  after the training run':34} {rows:10d} {head_s * 1e3:8.1f} "
          f"{head_s / rows * 1e9:7.0f}")  # fmt: skip
    for bulk in bulk_rows:
        await _validated_head_at(tmp / f"bulk{bulk}", bulk)


async def _validated_head_at(tmp: Path, rows_per_table: int) -> None:
    """validated_head() of a publisher store holding ``rows_per_table`` rows in each table."""
    async with mesh(tmp, with_node=False) as m:
        head = m.trainer.head
        rng = np.random.default_rng(0)
        keys = np.unique(rng.integers(1, 1 << 62, rows_per_table, dtype=np.int64))
        tables = {
            t: TouchedRows(keys, rng.standard_normal((keys.size, DIM)).astype(np.float32))
            for t in head.store.layout.tables
        }
        vector = head.store.vector.packed
        for delta in build_deltas(head.store.layout, head.shard_groups, vector, 1, tables, {}):
            head.publish(delta)
        start = time.perf_counter()
        DriverHead(m.driver).publisher.validated_head()
        head_s = time.perf_counter() - start
    rows = keys.size * len(tables)
    print(f"{'  bulk-loaded':34} {rows:10d} {head_s * 1e3:8.1f} {head_s / rows * 1e9:7.0f}")


# --- 3. freshness ---------------------------------------------------------------------------


@dataclass
class Scores:
    labels: list[np.ndarray] = dataclasses.field(default_factory=list)
    fresh: list[np.ndarray] = dataclasses.field(default_factory=list)
    stale: list[np.ndarray] = dataclasses.field(default_factory=list)

    def auc(self) -> tuple[float, float, int]:
        labels = np.concatenate(self.labels)
        return (
            auc(labels, np.concatenate(self.fresh)),
            auc(labels, np.concatenate(self.stale)),
            labels.size,
        )


def full_copy(store: ParamStore) -> ParamStore:
    """The 'full checkpoint': every shard's snapshot restored into a new store."""
    copy = ParamStore(store.layout)
    for shard in range(store.layout.n_shards):
        restore_shard(copy, snapshot_shard(store, shard))
    return copy


class FirstSeen:
    """Stream time at which each item was first seen."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def ages(self, batch: Batch) -> np.ndarray:
        for item, t in zip(batch.items.tolist(), batch.times_s.tolist(), strict=True):
            self.at.setdefault(item, t)
        born = np.array([self.at[i] for i in batch.items.tolist()])
        ages: np.ndarray = batch.times_s - born
        return ages


class Peekable:
    """A ``BatchSource`` whose next batch can be looked at before the trainer takes it."""

    def __init__(self, stream: SyntheticStream) -> None:
        self.stream = stream
        self._next: Batch | None = None

    def peek(self) -> Batch:
        if self._next is None:
            self._next = self.stream.next_batch()
        return self._next

    def next_batch(self) -> Batch | None:
        batch, self._next = self.peek(), None
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)


async def freshness(tmp: Path, stream_minutes: float) -> None:
    async with mesh(tmp, with_node=True, **{"trainer.publish_interval_s": 0.05}) as m:
        assert m.node is not None and m.node.replica is not None
        node_store = m.node.replica.store
        assert isinstance(m.trainer.source, SyntheticStream)
        source = Peekable(m.trainer.source)
        m.trainer.source = source
        checkpoint = ParamStore(node_store.layout)
        next_refresh = CHECKPOINT_EVERY_S
        seen, recent, everything = FirstSeen(), Scores(), Scores()
        wall = time.perf_counter()
        while source.stream.now_s < stream_minutes * 60:
            batch = source.peek()  # scored before it is trained on
            ages = seen.ages(batch)
            if batch.times_s[0] >= FRESH_WINDOW_S and _has_model(node_store, checkpoint):
                for scores, mask in ((recent, ages <= FRESH_WINDOW_S), (everything, ages >= 0)):
                    scores.labels.append(batch.labels[mask])
                    scores.fresh.append(_score(node_store, batch, mask))
                    scores.stale.append(_score(checkpoint, batch, mask))
            m.trainer.train_step()
            await asyncio.sleep(0)  # the node applies what has arrived
            if source.stream.now_s >= next_refresh:
                checkpoint = full_copy(m.trainer.head.store)
                next_refresh += CHECKPOINT_EVERY_S
        wall = time.perf_counter() - wall
    _print_freshness(recent, everything, stream_minutes * 60 / wall)


def _has_model(*stores: ParamStore) -> bool:
    return all(s.dense_tensors() for s in stores)


def _score(store: ParamStore, batch: Batch, mask: np.ndarray) -> np.ndarray:
    return score_pairs(store, batch.users[mask], batch.items[mask]).logits


def _print_freshness(recent: Scores, everything: Scores, speedup: float) -> None:
    print(f"\n3. Freshness (stream time ran {speedup:.0f}x faster than the wall clock, so the "
          "mesh's delivery lag counts that much more)")  # fmt: skip
    print(f"{'impressions':34} {'n':>8} {'AUC deltas':>11} {'AUC ckpt/60s':>13} {'ratio':>6}")
    for name, scores in (("of items first seen <= 60 s ago", recent), ("all", everything)):
        fresh, stale, n = scores.auc()
        print(f"{name:34} {n:8d} {fresh:11.3f} {stale:13.3f} {fresh / stale:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (about a minute)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configure_logging("console", "warning")
    steps, repeats, minutes = (300, 3, 5.0) if args.quick else (1500, 5, 15.0)
    bulk_rows = (100_000,) if args.quick else (100_000, 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        asyncio.run(throughput(root / "throughput", steps, repeats))
        asyncio.run(validation_cost(root / "validation", steps, bulk_rows))
        asyncio.run(freshness(root / "freshness", minutes))


if __name__ == "__main__":
    main()
