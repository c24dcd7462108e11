"""Mesh benchmark: delivery latency, publisher egress and WAN copies against a star, catch-up.

    python bench/mesh_bench.py [--quick]

3 datacenters x 4 nodes + the trainer, all real ``NodeDriver``s on CURVE sockets on 127.0.0.1,
in ONE process and ONE asyncio loop (so every node's decode, signature check and apply share
one Python thread: latencies include that queueing). ``mesh.shard_groups = 1`` and one table,
so a step is exactly one signed delta of ``--rows`` rows (dim 64 float32). Modes, same run:

- p2prec: ``trainer.publish`` -> one copy to each datacenter's tree root -> k-ary tree.
- star: the trainer encodes+signs once and sends the frames to every node (``Route.REPAIR``,
  applied and never relayed).

Latency: from just before the publish call (encode + sign included) to the moment the last
node's store vector reaches the delta's versions (observed by wrapping each ``Replica.handle``).
Catch-up: one node drops all traffic (link fault), ~1% of the rows change, it heals and catches up;
bytes moved = its transport's ``bytes_in`` (all classes, gossip included) until its root equals
the trainer's, over the bytes of the rows it lacked, rows x (dim*4 + 16).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2prec.config import Config, load_config
from p2prec.core.effects import Effect, Incoming, Route
from p2prec.core.publisher import Publisher
from p2prec.io.curve import generate_node_keys
from p2prec.io.node import NodeDriver
from p2prec.log import configure_logging
from p2prec.sim.lineage import make_delta
from p2prec.wire.codec import encode
from p2prec.wire.messages import ParamDelta
from p2prec.wire.signing import Signer

DCS = ("dc1", "dc2", "dc3")
NODES_PER_DC = 4
TABLE = "emb"
DIM = 64
ROW_BYTES = DIM * 4 + 16  # values + id + version
DEADLINE_S = 30.0


UNDO_ROWS_MAX = 200_000  # rows kept for undo (no validation in these benches) and history


def make_config(
    tmp: Path,
    node_id: str,
    dc: str,
    seeds: list[str],
    role: str,
    overrides: dict[str, Any] | None = None,
) -> Config:
    return load_config(
        "local",
        {
            "node.id": node_id,
            "node.dc": dc,
            "node.role": role,
            "node.data_dir": str(tmp / "state" / node_id),
            "mesh.seeds": seeds,
            "mesh.shard_groups": 1,
            "mesh.checkpoint_interval_s": 5.0,
            "mesh.delta_log_bytes_max": 32 << 20,
            "mesh.queue_max": 4096,
            "store.row_shards": 64,
            "store.dim": DIM,
            "store.tables": [TABLE],
            "store.initial_rows": 131072,
            "store.undo_rows_max": UNDO_ROWS_MAX,
            "store.changelog_rows_max": UNDO_ROWS_MAX,
            "keys.curve_dir": str(tmp / "curve"),
            "keys.trainer_public_key": str(tmp / "trainer.pub"),
            **(overrides or {}),
        },
    )


@dataclass
class Tracker:
    """When each node's store reached each published delta's versions (loop time)."""

    shards: list[np.ndarray] = field(default_factory=list)
    versions: list[np.ndarray] = field(default_factory=list)
    published: list[float] = field(default_factory=list)
    reached: dict[str, list[float]] = field(default_factory=dict)
    next_k: dict[str, int] = field(default_factory=dict)

    def add(self, delta: ParamDelta, t0: float) -> None:
        self.shards.append(np.asarray(delta.shards, dtype=np.int64))
        self.versions.append(np.asarray(delta.versions, dtype=np.int64))
        self.published.append(t0)

    def observe(self, name: str, vector: np.ndarray, now: float) -> None:
        k = self.next_k.setdefault(name, 0)
        times = self.reached.setdefault(name, [])
        while k < len(self.shards) and bool(np.all(vector[self.shards[k]] >= self.versions[k])):
            times.append(now)
            k += 1
        self.next_k[name] = k

    def done(self, names: Sequence[str]) -> bool:
        return all(self.next_k.get(n, 0) >= len(self.shards) for n in names)

    def latencies_ms(self, names: Sequence[str]) -> np.ndarray:
        last: np.ndarray = np.max(np.array([self.reached[n] for n in names]), axis=0)
        return np.asarray((last - np.array(self.published)) * 1000.0, dtype=np.float64)


@dataclass
class SendCount:
    """Sends of one route by (source dc, destination dc) while ``active``."""

    route: Route
    active: bool = False
    copies: int = 0
    wan: int = 0
    from_trainer: int = 0


class Bench:
    def __init__(
        self,
        tmp: Path,
        rows: int,
        key_space: int,
        nodes_per_dc: int = NODES_PER_DC,
        signer: Signer | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        """``overrides``: config keys set on every member (the trainer too)."""
        self.tmp, self.rows, self.key_space = tmp, rows, key_space
        self.overrides = dict(overrides or {})
        self.signer = signer if signer is not None else Signer.generate()
        self.names = [f"{dc}-n{i}" for dc in DCS for i in range(1, nodes_per_dc + 1)]
        for name in ("trainer", *self.names):
            generate_node_keys(tmp / "curve", name)
        self.rng = np.random.default_rng(0)
        self.nodes: dict[str, NodeDriver] = {}
        self.dc_of_addr: dict[str, str] = {}
        self.tracker = Tracker()
        self.tree_sends = SendCount(Route.TREE)
        self.trainer: NodeDriver | None = None
        self.seed = ""

    # -- set-up ---------------------------------------------------------------------------------

    async def start(self) -> None:
        config = make_config(self.tmp, "trainer", "dc-t", [], "trainer", self.overrides)
        self.trainer = NodeDriver(config, self.signer.verifier(), self.signer)
        addr = await self.trainer.start()
        self.dc_of_addr[addr] = "dc-t"
        self.count_sends(self.trainer, "dc-t")
        self.seed = f"trainer@{addr}"
        for name in self.names:
            await self.start_node(name)

    async def start_node(self, name: str) -> NodeDriver:
        dc = name.split("-", maxsplit=1)[0]
        config = make_config(self.tmp, name, dc, [self.seed], "node", self.overrides)
        driver = NodeDriver(config, self.signer.verifier())
        addr = await driver.start()
        self.dc_of_addr[addr] = dc
        self.nodes[name] = driver
        self.count_sends(driver, dc)
        self.observe(name, driver)
        return driver

    def count_sends(self, driver: NodeDriver, dc: str) -> None:
        inner = driver.transport.send
        is_trainer = driver is self.trainer

        def send(addr: str, frames: Sequence[Any], route: Route = Route.MESH, **kw: Any) -> bool:
            counter = self.tree_sends
            if counter.active and route is counter.route:
                counter.copies += 1
                counter.wan += self.dc_of_addr.get(addr) != dc
                counter.from_trainer += is_trainer
            return inner(addr, frames, route, **kw)

        setattr(driver.transport, "send", send)  # noqa: B010 - instance hook, bench only

    def observe(self, name: str, driver: NodeDriver) -> None:
        replica = driver.replica
        assert replica is not None
        inner: Callable[[Incoming, float], list[Effect]] = replica.handle
        loop = asyncio.get_running_loop()

        def handle(event: Incoming, now: float) -> list[Effect]:
            effects = inner(event, now)
            self.tracker.observe(name, replica.store.vector_view, loop.time())
            return effects

        setattr(replica, "handle", handle)  # noqa: B010 - instance hook, bench only

    @property
    def publisher(self) -> Publisher:
        assert self.trainer is not None and isinstance(self.trainer.replica, Publisher)
        return self.trainer.replica

    def members_known(self) -> bool:
        drivers = [*self.nodes.values(), self.trainer]
        want = len(self.names) + 1
        return all(
            d is not None
            and d.replica is not None
            and len(d.replica.membership.alive_members()) >= want
            for d in drivers
        )

    def converged(self, names: Sequence[str]) -> bool:
        head = self.publisher.store
        return all(
            (r := self.nodes[n].replica) is not None
            and r.store.root == head.root
            and r.store.vector == head.vector
            for n in names
        )

    async def close(self) -> None:
        for driver in [*self.nodes.values(), self.trainer]:
            if driver is not None:
                try:
                    await asyncio.wait_for(driver.close(), 5.0)
                except TimeoutError:
                    print("# a driver did not close in 5 s", file=sys.stderr, flush=True)

    # -- the stream -----------------------------------------------------------------------------

    def next_delta(self) -> ParamDelta:
        store = self.publisher.store
        keys = np.unique(self.rng.integers(0, self.key_space, self.rows))
        return make_delta(
            store.layout,
            store.vector.packed,
            {TABLE: keys},
            False,
            self.rng,
            self.publisher.fencing.epoch,
        )

    async def stream(
        self, steps: int, rate: float, star: bool, deltas: Sequence[ParamDelta] | None = None
    ) -> list[ParamDelta]:
        """Publish ``steps`` deltas at ``rate``: the next of ``deltas`` when given (a stream built
        beforehand from the same initial state, so that every system gets the same deltas),
        else fresh random rows on the publisher's head."""
        assert self.trainer is not None
        if deltas is not None and len(deltas) < steps:
            raise ValueError(f"{steps} steps but only {len(deltas)} deltas")
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), []
        addrs = [d.transport.addr for d in self.nodes.values()]
        for step in range(steps):
            await asyncio.sleep(max(0.0, start + step / rate - loop.time()))
            delta = self.next_delta() if deltas is None else deltas[step]
            t0 = loop.time()
            self.tracker.add(delta, t0)
            if star:
                frames = list(encode(delta, self.signer))
                self.publisher.publish(delta, frames)  # the head steps; its tree sends dropped
                for addr in addrs:
                    self.trainer.transport.send(addr, frames, Route.REPAIR)
            else:
                self.trainer.publish(delta)
            sent.append(delta)
        return sent


async def until(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class ModeResult:
    mode: str
    p50: float
    p99: float
    publisher_copies: float
    wan_copies: float
    deltas: int


async def run_mode(
    bench: Bench,
    mode: str,
    steps: int,
    rate: float,
    deltas: Sequence[ParamDelta] | None = None,
    star: bool | None = None,
) -> ModeResult:
    """Stream ``steps`` deltas (see ``Bench.stream``) as p2prec or, when ``star`` (default:
    ``mode == "star"``), as a star; wait until every node holds every one of them."""
    bench.tracker = Tracker()
    counter = bench.tree_sends
    counter.active, counter.copies, counter.wan, counter.from_trainer = True, 0, 0, 0
    star = mode == "star" if star is None else star
    await bench.stream(steps, rate, star, deltas)
    await until(lambda: bench.tracker.done(bench.names), f"{mode}: every delta on every node")
    counter.active = False
    lat = bench.tracker.latencies_ms(bench.names)
    if star:  # every node gets a copy from the trainer, all cross into another dc
        publisher, wan = float(len(bench.names)), float(len(bench.names))
        assert counter.copies == 0, "star deltas must not be relayed"
    else:
        publisher, wan = counter.from_trainer / steps, counter.wan / steps
    return ModeResult(
        mode, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), publisher, wan, steps
    )


@dataclass
class CatchUp:
    node: str
    steps_down: int
    rows_held: int
    rows_lacked: int
    bytes_in: int
    seconds: float

    @property
    def ratio(self) -> float:
        return self.bytes_in / (self.rows_lacked * ROW_BYTES)


async def run_catch_up(bench: Bench, rate: float) -> CatchUp:
    victim = bench.names[-1]
    rows_held = bench.publisher.store.row_count(TABLE)
    steps = max(1, round(0.01 * rows_held / bench.rows))
    # NodeDriver.close() can hang (see the report), so the outage is a link fault: the
    # victim drops everything, both ways, on every link, then heals.
    driver = bench.nodes[victim]
    driver.transport.set_link_fault("127.0.0.1", drop=True)
    others = [n for n in bench.names if n != victim]
    bench.tracker = Tracker()
    deltas = await bench.stream(steps, rate, star=False)
    await until(lambda: bench.converged(others), "the others converge without the victim")
    lacked = np.unique(np.concatenate([d.tables[TABLE].keys for d in deltas])).size
    counters = driver.transport.counters
    before = sum(counters.bytes_in.values())
    start = time.perf_counter()
    driver.transport.clear_link_faults()
    await until(lambda: bench.converged([victim]), "the healed node catches up")
    seconds = time.perf_counter() - start
    bytes_in = sum(counters.bytes_in.values()) - before
    return CatchUp(victim, steps, rows_held, int(lacked), bytes_in, seconds)


async def start_mesh(bench: Bench) -> float:
    """Start the trainer and the nodes, wait until every member knows every other; seconds."""
    t = time.perf_counter()
    await bench.start()
    await until(bench.members_known, "membership")
    await asyncio.sleep(0.5)  # every view the same: trees agree
    return time.perf_counter() - t


async def bench_main(args: argparse.Namespace) -> None:
    seconds = 3.0 if args.quick else args.seconds
    steps = max(1, round(seconds * args.rate))
    with tempfile.TemporaryDirectory(prefix="p2prec-mesh-bench-") as tmp:
        bench = Bench(Path(tmp), args.rows, args.key_space)
        try:
            setup_s = await start_mesh(bench)
            # a short warm-up opens every CURVE link before measuring
            await run_mode(bench, "warm-up", max(1, int(args.rate)), args.rate)
            results = []
            for mode in ("p2prec", "star"):
                print(f"# {mode} ...", file=sys.stderr, flush=True)
                results.append(await run_mode(bench, mode, steps, args.rate))
                print(f"# {results[-1]}", file=sys.stderr, flush=True)
                await until(lambda: bench.converged(bench.names), f"{mode}: convergence")
            print("# catch-up ...", file=sys.stderr, flush=True)
            catch = await run_catch_up(bench, args.rate)
        except BaseException as exc:
            print(f"# failed: {exc!r}", file=sys.stderr, flush=True)
            raise
        finally:
            await bench.close()
    print_report(args, steps, setup_s, results, catch)


def print_report(
    args: argparse.Namespace,
    steps: int,
    setup_s: float,
    results: list[ModeResult],
    catch: CatchUp,
) -> None:
    n = len(DCS) * NODES_PER_DC
    print(
        f"mesh bench: {len(DCS)} dcs x {NODES_PER_DC} nodes + trainer, CURVE on 127.0.0.1, "
        f"all {n + 1} NodeDrivers in one process and one asyncio loop"
    )
    print(
        f"stream: {steps} deltas per mode at {args.rate:g}/s, one delta per step "
        f"(mesh.shard_groups=1, one table), ~{args.rows} rows x dim {DIM} float32 each "
        f"({args.rows * ROW_BYTES / 1024:.0f} KiB of rows); set-up {setup_s:.1f} s"
    )
    print()
    print(
        f"{'mode':8} {'p50 ms':>8} {'p99 ms':>8} {'pub copies/delta':>17} {'WAN copies/delta':>17}"
    )
    for r in results:
        print(
            f"{r.mode:8} {r.p50:8.1f} {r.p99:8.1f} {r.publisher_copies:17.2f} {r.wan_copies:17.2f}"
        )
    mesh, star = results
    print(
        f"{'ratio':8} {mesh.p50 / star.p50:8.2f} {mesh.p99 / star.p99:8.2f} "
        f"{mesh.publisher_copies / star.publisher_copies:17.2f} "
        f"{mesh.wan_copies / star.wan_copies:17.2f}   (p2prec / star)"
    )
    verdict = "met" if mesh.p99 < 100 else "NOT met"
    print(f"goal p99 < 100 ms (p2prec): {verdict}")
    print()
    print(
        f"catch-up: {catch.node} cut off for {catch.steps_down} deltas; "
        f"{catch.rows_lacked} of {catch.rows_held} rows lacked "
        f"({100 * catch.rows_lacked / catch.rows_held:.2f}%, {catch.rows_lacked * ROW_BYTES} B)"
    )
    print(
        f"catch-up: heal -> root equal to the trainer's in {catch.seconds * 1000:.0f} ms; "
        f"bytes in {catch.bytes_in} (all traffic to the node, gossip included)"
    )
    verdict = "met" if catch.ratio <= 1.2 else "NOT met"
    print(f"catch-up: bytes moved / bytes lacked = {catch.ratio:.2f} (goal <= 1.2: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s per mode instead of --seconds")
    parser.add_argument("--seconds", type=float, default=10.0, help="stream length per mode")
    parser.add_argument("--rate", type=float, default=50.0, help="deltas per second")
    parser.add_argument("--rows", type=int, default=1000, help="rows per delta")
    parser.add_argument("--key-space", type=int, default=100_000, help="distinct row ids")
    args = parser.parse_args()
    configure_logging(level="warning")
    asyncio.run(bench_main(args))


if __name__ == "__main__":
    main()
