"""Worker processes for ``bench/compare.py``: each system's members spread over W processes.

Each worker is one process and one asyncio loop hosting its share of one system's members
(mesh ``NodeDriver``s, or Redis subscribers); the WAN proxy of the Redis run is its own process
too (it stands for the network). The main process talks to a worker over a
``multiprocessing`` pipe: it sends ``(command, argument)`` and waits for ``("ok", value)`` or
``("error", traceback)``. Workers record wall-clock times (``time.time()``, one clock for every
process on the host) and send them back. Workers are started with ``spawn`` (the main process
runs an event loop and ZeroMQ threads: no fork), ignore SIGINT (the main process stops them),
exit when the pipe closes, and are killed by pid when they do not stop in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mesh_bench as mb
import redis.asyncio as aioredis
from wan_proxy import WanProxy

from p2prec.core.effects import Effect, Incoming, Route
from p2prec.io.node import NodeDriver
from p2prec.log import configure_logging
from p2prec.model.layout import StoreLayout
from p2prec.model.store import ParamStore
from p2prec.wire.codec import decode
from p2prec.wire.messages import ParamDelta
from p2prec.wire.signing import Verifier

CHANNEL = "p2prec-deltas"
DEADLINE_S = 60.0  # any one wait inside a worker
REPLY_S = DEADLINE_S + 30.0  # the longest the main process waits for a worker's reply
STOP_S = 30.0  # a worker that has not answered "close" by then is killed by pid


def interleave(names: Sequence[str], dc_of: Callable[[str], str], workers: int) -> list[list[str]]:
    """Split members over ``workers`` so that each one hosts members of every datacenter: the
    members in round-robin datacenter order (dc1, dc2, dc3, dc1, ...), dealt out in turn."""
    by_dc: dict[str, list[str]] = {}
    for name in names:
        by_dc.setdefault(dc_of(name), []).append(name)
    order = [
        queue[i]
        for i in range(max(len(q) for q in by_dc.values()))
        for queue in by_dc.values()
        if i < len(queue)
    ]
    shares = [order[w::workers] for w in range(workers)]
    return [s for s in shares if s]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used, from Linux /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


@dataclass
class CpuMeter:
    """CPU seconds by role (pids per role) over a stretch of wall time."""

    roles: dict[str, list[int]]
    start: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    def __enter__(self) -> CpuMeter:
        self.start = self.read()
        self.wall = time.monotonic()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            return  # a member may be gone: nothing to read, and the error is what matters
        end = self.read()
        self.start = {role: end[role] - self.start[role] for role in end}
        self.wall = time.monotonic() - self.wall

    def read(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.roles.items()}

    def note(self) -> str:
        """After the ``with``: CPU seconds per role, and all of it over wall x CPUs."""
        total = sum(self.start.values())
        cpus = os.cpu_count() or 1
        parts = ", ".join(f"{role} {sec:.2f}" for role, sec in self.start.items())
        return (
            f"CPU s over the measured deltas ({self.wall:.1f} s wall): {parts}; "
            f"{100 * total / (self.wall * cpus):.0f}% of {cpus} CPUs"
        )


# --- the pipe, from asyncio ------------------------------------------------------------------


async def arecv(conn: Connection, timeout_s: float | None) -> Any:
    """``conn.recv()`` once the pipe is readable, without blocking the loop."""
    if not conn.poll():
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        fd = conn.fileno()
        loop.add_reader(fd, wake)
        try:
            await asyncio.wait_for(ready, timeout_s)
        finally:
            loop.remove_reader(fd)
    return conn.recv()


class Host(Protocol):
    async def handle(self, cmd: str, arg: Any) -> Any: ...

    async def aclose(self) -> None: ...


def worker_main(conn: Connection, kind: str, spec: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops its workers
    configure_logging(level="warning")
    host: Host = HOSTS[kind](spec)
    asyncio.run(serve(conn, host))


async def serve(conn: Connection, host: Host) -> None:
    try:
        while True:
            try:
                cmd, arg = await arecv(conn, None)
            except (EOFError, OSError):
                return  # the main process is gone
            try:
                reply: tuple[str, Any] = ("ok", await host.handle(cmd, arg))
            except Exception:
                reply = ("error", traceback.format_exc())
            conn.send(reply)
            if cmd == "close":
                return
    finally:
        await host.aclose()


class Pool:
    """W worker processes of one kind; ``async with`` starts them and stops them by pid."""

    def __init__(self, kind: str, specs: Sequence[dict[str, Any]]) -> None:
        self.kind, self.specs = kind, list(specs)
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        self.locks: list[asyncio.Lock] = []

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    async def __aenter__(self) -> Pool:
        ctx = mp.get_context("spawn")
        try:
            for spec in self.specs:
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=worker_main, args=(child, self.kind, spec), name=f"{self.kind}-worker"
                )
                proc.daemon = True  # multiprocessing terminates it if the main process exits
                proc.start()
                child.close()
                self.procs.append(proc)
                self.conns.append(parent)
                self.locks.append(asyncio.Lock())
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def call(self, i: int, cmd: str, arg: Any = None, timeout_s: float = REPLY_S) -> Any:
        async with self.locks[i]:
            try:
                self.conns[i].send((cmd, arg))
                status, value = await arecv(self.conns[i], timeout_s)
            except (EOFError, OSError):
                self.procs[i].join(1.0)
                code = self.procs[i].exitcode
                raise RuntimeError(f"{self.kind} worker {i} died (exit code {code})") from None
            except TimeoutError:
                raise TimeoutError(f"{self.kind} worker {i}: no reply to {cmd}") from None
        if status != "ok":
            raise RuntimeError(f"{self.kind} worker {i}: {cmd} failed:\n{value}")
        return value

    async def call_all(
        self, cmd: str, args: Sequence[Any] | None = None, timeout_s: float = REPLY_S
    ) -> list[Any]:
        """The same command on every worker at once (``args[i]`` for worker i, else None)."""
        tasks = [
            asyncio.create_task(self.call(i, cmd, None if args is None else args[i], timeout_s))
            for i in range(len(self.specs))
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:  # one failed (or this was cancelled): stop waiting for the others
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:  # the failure, not the cancellations it caused
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                raise exc
        return [task.result() for task in tasks]

    async def stop(self) -> None:
        """Ask every worker to close, then kill by pid whatever is still running."""
        for i in range(len(self.conns)):
            if self.procs[i].is_alive() and not self.locks[i].locked():
                with contextlib.suppress(Exception):
                    await self.call(i, "close", None, STOP_S)
        end = time.monotonic() + 5.0
        for proc in self.procs:
            proc.join(max(0.1, end - time.monotonic()))
            if proc.is_alive() and proc.pid is not None:
                print(f"# {self.kind} worker {proc.pid}: killed", file=sys.stderr, flush=True)
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(5.0)
        for conn in self.conns:
            conn.close()
        self.procs, self.conns, self.locks = [], [], []


# --- mesh members (p2prec and the star) --------------------------------------------------------


def count_sends(
    driver: NodeDriver, dc: str, dc_of_addr: dict[str, str], counter: mb.SendCount, trainer: bool
) -> None:
    """Count ``counter.route`` sends while ``counter.active`` (as ``mesh_bench.Bench``)."""
    inner = driver.transport.send

    def send(addr: str, frames: Sequence[Any], route: Route = Route.MESH, **kw: Any) -> bool:
        if counter.active and route is counter.route:
            counter.copies += 1
            counter.wan += dc_of_addr.get(addr) != dc
            counter.from_trainer += trainer
        return inner(addr, frames, route, **kw)

    setattr(driver.transport, "send", send)  # noqa: B010 - instance hook, bench only


def same_state(driver: NodeDriver, root: bytes, packed: np.ndarray) -> bool:
    replica = driver.replica
    return (
        replica is not None
        and replica.store.root == root
        and bool(np.array_equal(replica.store.vector_view, packed))
    )


class MeshHost:
    """Some of the mesh's ``NodeDriver``s in this process's loop."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.tmp = Path(spec["tmp"])
        self.names: list[str] = spec["names"]
        self.seed: str = spec["seed"]
        self.overrides: dict[str, Any] = spec["overrides"]
        self.verifier = Verifier(spec["public"])
        self.nodes: dict[str, NodeDriver] = {}
        self.dc_of_addr: dict[str, str] = {}
        self.counter = mb.SendCount(Route.TREE)
        self.tracker = mb.Tracker()

    async def handle(self, cmd: str, arg: Any) -> Any:
        method: Callable[[Any], Any] = getattr(self, f"on_{cmd}")
        return await method(arg)

    async def on_start(self, _: None) -> dict[str, tuple[str, str]]:
        out = {}
        for name in self.names:
            dc = name.split("-", maxsplit=1)[0]
            config = mb.make_config(self.tmp, name, dc, [self.seed], "node", self.overrides)
            driver = NodeDriver(config, self.verifier)
            addr = await driver.start()
            self.nodes[name] = driver
            count_sends(driver, dc, self.dc_of_addr, self.counter, False)
            self.observe(name, driver)
            out[name] = (addr, dc)
        return out

    def observe(self, name: str, driver: NodeDriver) -> None:
        replica = driver.replica
        assert replica is not None
        inner: Callable[[Incoming, float], list[Effect]] = replica.handle

        def handle(event: Incoming, now: float) -> list[Effect]:
            effects = inner(event, now)
            self.tracker.observe(name, replica.store.vector_view, time.time())
            return effects

        setattr(replica, "handle", handle)  # noqa: B010 - instance hook, bench only

    async def on_dcs(self, dc_of_addr: dict[str, str]) -> None:
        self.dc_of_addr.update(dc_of_addr)

    async def on_alive(self, _: None) -> int:
        """The fewest alive members any of this worker's nodes knows."""
        return min(
            len(d.replica.membership.alive_members()) if d.replica is not None else 0
            for d in self.nodes.values()
        )

    async def on_track(self, marks: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """From now on: when each node reaches each of these (shards, versions), in order."""
        tracker = mb.Tracker()
        for shards, versions in marks:
            tracker.shards.append(shards)
            tracker.versions.append(versions)
            tracker.published.append(0.0)
        self.tracker = tracker
        c = self.counter
        c.active, c.copies, c.wan, c.from_trainer = True, 0, 0, 0

    async def on_done(self, _: None) -> tuple[dict[str, list[float]], int, int]:
        """Wait until every node here reached every tracked delta: (wall time each node reached
        each one, tree copies sent here, of which across datacenters)."""
        names = list(self.nodes)
        await mb.until(lambda: self.tracker.done(names), "every delta on every node", DEADLINE_S)
        self.counter.active = False
        reached = {n: self.tracker.reached.get(n, []) for n in names}
        return reached, self.counter.copies, self.counter.wan

    async def on_converged(self, arg: tuple[bytes, np.ndarray, list[str] | None]) -> bool:
        root, packed, names = arg
        return all(
            same_state(self.nodes[n], root, packed)
            for n in (self.nodes if names is None else names)
            if n in self.nodes
        )

    async def on_fault(self, name: str) -> None:
        self.nodes[name].transport.set_link_fault("127.0.0.1", drop=True)

    async def on_heal(self, arg: tuple[str, bytes, np.ndarray]) -> float:
        """Heal ``name`` and wait until it holds (root, vector): milliseconds."""
        name, root, packed = arg
        driver = self.nodes[name]
        t = time.perf_counter()
        driver.transport.clear_link_faults()
        await mb.until(lambda: same_state(driver, root, packed), "the healed node catches up")
        return (time.perf_counter() - t) * 1000

    async def on_close(self, _: None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        nodes, self.nodes = self.nodes, {}
        for driver in nodes.values():
            try:
                await asyncio.wait_for(driver.close(), 5.0)
            except TimeoutError:
                print("# a driver did not close in 5 s", file=sys.stderr, flush=True)


# --- Redis subscribers -----------------------------------------------------------------------


def bytes_frames(payload: bytes) -> tuple[int, list[memoryview]]:
    view = memoryview(payload)
    seq, n = struct.unpack_from("<II", view, 0)
    off, frames = 8, []
    for _ in range(n):
        (size,) = struct.unpack_from("<I", view, off)
        frames.append(view[off + 4 : off + 4 + size])
        off += 4 + size
    return seq, frames


@dataclass
class Subscriber:
    index: int
    port: int
    store: ParamStore
    received: dict[int, float] = field(default_factory=dict)  # seq -> wall time applied
    gaps: int = 0
    down: asyncio.Event = field(default_factory=asyncio.Event)
    up: asyncio.Event = field(default_factory=asyncio.Event)


async def subscribe_loop(sub: Subscriber, verifier: Verifier, stop: asyncio.Event) -> None:
    while not stop.is_set():
        client = aioredis.Redis(host="127.0.0.1", port=sub.port)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            while not stop.is_set() and not sub.down.is_set():
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
                if msg is None or msg["type"] != "message":
                    continue
                seq, frames = bytes_frames(msg["data"])
                delta = decode(frames, verifier)
                assert isinstance(delta, ParamDelta)
                result = sub.store.apply(delta)
                sub.gaps += bool(result.gaps)
                if not result.gaps:
                    sub.received[seq] = time.time()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py 5.2 stub
            await client.aclose()
        if sub.down.is_set():  # the restart: away until told to come back
            await asyncio.wait_for(sub.up.wait(), DEADLINE_S)
            sub.down.clear()
            sub.up.clear()


def subscriber_store(layout: StoreLayout, rows: int) -> ParamStore:
    """The store of a Redis subscriber: the budgets and size of a mesh member's."""
    undo = mb.UNDO_ROWS_MAX
    return ParamStore(layout, undo_rows_max=undo, history_rows_max=undo, capacity_rows=rows)


class RedisHost:
    """Some of the Redis subscribers in this process's loop."""

    def __init__(self, spec: dict[str, Any]) -> None:
        layout: StoreLayout = spec["layout"]
        self.verifier = Verifier(spec["public"])
        self.subs = {
            i: Subscriber(i, port, subscriber_store(layout, spec["store_rows"]))
            for i, port in spec["subs"]
        }
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def handle(self, cmd: str, arg: Any) -> Any:
        method: Callable[[Any], Any] = getattr(self, f"on_{cmd}")
        return await method(arg)

    async def on_start(self, _: None) -> None:
        self.tasks = [
            asyncio.create_task(subscribe_loop(s, self.verifier, self.stop))
            for s in self.subs.values()
        ]

    async def on_received(self, arg: tuple[int, int, int | None]) -> dict[int, float]:
        """Wait until every subscriber here (but ``skip``) applied seqs first..stop-1: for each,
        the wall time the last of them did."""
        first, stop, skip = arg
        subs = [s for s in self.subs.values() if s.index != skip]
        seqs = range(first, stop)
        pending = {s.index: first for s in subs}  # the first seq each may still lack
        end = time.monotonic() + DEADLINE_S
        while pending:  # cheap polls (O(new deltas)): they share the subscribers' loop
            for s in subs:
                q = pending.get(s.index, stop)
                while q < stop and q in s.received:
                    q += 1
                if q >= stop:
                    pending.pop(s.index, None)
                else:
                    pending[s.index] = q
            if not pending:
                break
            if time.monotonic() > end:
                raise TimeoutError("redis: a subscriber did not receive the stream")
            for task in self.tasks:
                if task.done():
                    task.result()  # a subscriber failed: say why
            await asyncio.sleep(0.005)
        return {q: max((s.received[q] for s in subs), default=0.0) for q in seqs}

    async def on_down(self, index: int) -> None:
        self.subs[index].down.set()

    async def on_up(self, index: int) -> None:
        self.subs[index].up.set()

    async def on_victim(self, arg: tuple[int, int, int]) -> tuple[int, int]:
        """(how many of seqs first..first+count-1 ``index`` never applied, deltas it refused)."""
        index, first, count = arg
        sub = self.subs[index]
        return sum(q not in sub.received for q in range(first, first + count)), sub.gaps

    async def on_close(self, _: None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.stop.set()
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5.0)


# --- the WAN proxy of the Redis run ----------------------------------------------------------


class ProxyHost:
    """``bench/wan_proxy.py`` in its own process: it stands for the network, so its copying
    shares neither the trainer's nor a subscriber's interpreter."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.upstream: tuple[str, int] = ("127.0.0.1", spec["port"])
        self.rate: float = spec["rate"]
        self.proxy: WanProxy | None = None

    async def handle(self, cmd: str, arg: Any) -> Any:
        if cmd == "start":
            self.proxy = WanProxy()
            self.proxy.start()
            return (
                self.proxy.listen(self.upstream, "trainer", self.rate, "up"),
                self.proxy.listen(self.upstream, "dc1-server", self.rate, "down"),
            )
        if cmd == "close":
            await self.aclose()
            return None
        raise ValueError(f"unknown command {cmd}")

    async def aclose(self) -> None:
        proxy, self.proxy = self.proxy, None
        if proxy is not None:
            proxy.close()


HOSTS: dict[str, Callable[[dict[str, Any]], Host]] = {
    "mesh": MeshHost,
    "redis": RedisHost,
    "proxy": ProxyHost,
}
