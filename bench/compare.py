"""p2prec against the alternatives, on one stream of deltas (issue 6, item 2).

    python bench/compare.py [--quick] [--nodes 9,18,36] [--wan-mbit 1000] [--workers W]

One stream of signed deltas is built once (seeded, ``make_delta`` from an empty store of the
mesh's layout) and every system gets the same deltas, for meshes of N nodes in 3 datacenters.

Harness: each system's members are spread over W worker processes (``--workers``, default the
CPU count), each one process and one asyncio loop hosting its share of the members, every
datacenter in every worker (``bench/compare_procs.py``). The trainer/publisher runs in the main
process, for every system: one host of its own, as in a deployment, whose publish pacing does
not wait behind any member's work, and which also drives the run (short pipe messages to the
workers between phases, polls while waiting for convergence). Workers record wall-clock times
(``time.time()``: one clock for every process on one host) and send them back over a pipe.

- p2prec: ``bench/mesh_bench.py``'s ``NodeDriver`` members (CURVE on 127.0.0.1), trainer -> one
  copy per datacenter -> k-ary tree; Merkle catch-up.
- star: the same mesh, the trainer sends every delta to every node (never relayed).
- Redis pub/sub: a real ``redis-server`` on 127.0.0.1 (random port, no persistence, stopped by
  pid); the trainer PUBLISHes each encoded delta (length-prefixed frames) on one channel; N
  redis-py asyncio subscribers, spread over the workers, decode, verify and apply into a
  ``ParamStore``. redis-py is pinned below 8 (8.1.0 formats every pub/sub message for a debug
  log, see MACHINE-NOTES), the version is printed.
- snapshot: a full-store snapshot to every node every 60 s, COMPUTED from the same stream (the
  snapshot bytes of the store the stream builds), not measured.

WAN model (``--wan-mbit``, the same for every system): on one host over loopback bandwidth is
free, so the one thing a tree saves, the publisher's WAN egress (3 copies instead of N), would
cost nothing and a star could only win. Real hosts reach other datacenters through a bounded
uplink, so every host here gets one: all of a host's sends to another datacenter go through one
FIFO that releases ``--wan-mbit`` (serialisation delay = bytes / rate; LAN sends are free). The
default, 1,000 Mbit/s, is a 1 Gbit/s share of a host's WAN uplink, about 20 times one copy of
the stream (266 KiB x 20 deltas/s = 44 Mbit/s): the headroom a team would give one update
stream. p2prec and star: ``mesh.wan_uplink_mbit`` on every member (the trainer is its own
datacenter, so each of its copies crosses its uplink; p2prec's relays send inside their
datacenter, for free). Redis: the server sits in dc1; its copies to the dc2/dc3 subscribers
cross the server host's uplink, and the trainer's PUBLISH its own: an asyncio TCP proxy in its
own process (``bench/wan_proxy.py``, the same FIFO; it stands for the network) shapes both;
dc1's subscribers connect directly. Snapshot: the WAN copies of each snapshot cross the dc1
host's uplink one after another, and that transfer time is added to the staleness. No
propagation delay is modelled (the same constant for every system). ``--wan-mbit 0``: unlimited,
the old harness.

Latency: publish call (encode + sign included) -> the last node applied the delta (wall clock,
across processes). Egress: bytes sent by the trainer (p2prec, star) or the Redis server
(measured, INFO total_net_output_bytes) per delta. WAN: the trainer sits in its own datacenter
for p2prec and star (every trainer copy crosses); the Redis server and the snapshot job sit in
dc1 (copies to dc2, dc3 cross). Restart: one node is cut off for ``--outage`` deltas; p2prec:
catch-up measured, lost = deltas it still lacks after catch-up; Redis: measured, what the
resubscribed client never received; star: no replay by construction, everything sent while down
is lost (computed); snapshot: nothing lost, the node serves the last snapshot it loads
(staleness).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeAlias

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_procs as cp
import mesh_bench as mb
import redis
import redis.asyncio as aioredis

from p2prec.core.effects import Route
from p2prec.core.fencing import FIRST_EPOCH
from p2prec.core.publisher import Publisher
from p2prec.io.curve import generate_node_keys
from p2prec.io.node import NodeDriver, store_layout
from p2prec.io.shaper import MBIT
from p2prec.log import configure_logging
from p2prec.model.layout import StoreLayout
from p2prec.model.snapshot import snapshot_shards
from p2prec.model.store import ParamStore
from p2prec.sim.lineage import make_delta
from p2prec.wire.codec import encode
from p2prec.wire.messages import ParamDelta
from p2prec.wire.signing import Signer

Args: TypeAlias = argparse.Namespace
SNAPSHOT_PERIOD_S = 60.0
CHANNEL = cp.CHANNEL
DEADLINE_S = cp.DEADLINE_S
AFTER_OUTAGE = 5  # deltas published after the restart
STORE_HEADROOM = 1.25  # table slots beyond the stream's ids + the undo budget (store_rows)


# --- the stream -------------------------------------------------------------------------------


@dataclass
class Stream:
    deltas: list[ParamDelta]
    wire_bytes: float  # mean encoded (signed) size of a delta
    snapshot_bytes: int  # full snapshot of the store after the whole stream
    layout: StoreLayout


def store_rows(args: argparse.Namespace) -> int:
    """Table slots every system's stores start with: every id of the stream plus the rows
    kept for undo (no validation frees them here), with STORE_HEADROOM, as a deployment sizes
    ``store.initial_rows`` for its stream. Smaller, the tables doubled mid-measurement (a copy
    of every row, on every member at the same delta: the 9-node p99 of every mesh system was
    that stall); sized exactly, every table reached its growth threshold once the undo budget
    filled (a spare array prepared at 9/10 and a doubling, on every member of every system
    within seconds: in a 30 s stream at 36 nodes the p2prec members used 60-63 CPU s, 45-50
    with the headroom)."""
    key_space: int = args.key_space
    return int(STORE_HEADROOM * (key_space + mb.UNDO_ROWS_MAX))


def build_stream(layout: StoreLayout, count: int, rows: int, key_space: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    store = ParamStore(layout, capacity_rows=key_space)
    signer = Signer.generate()
    deltas, sizes = [], []
    for _ in range(count):
        keys = np.unique(rng.integers(0, key_space, rows))
        delta = make_delta(layout, store.vector.packed, {mb.TABLE: keys}, False, rng, FIRST_EPOCH)
        store.apply(delta)
        deltas.append(delta)
        sizes.append(sum(len(memoryview(f)) for f in encode(delta, signer)))
    snap = sum(len(b) for _, b in snapshot_shards(store, range(layout.n_shards)))
    return Stream(deltas, float(np.mean(sizes)), snap, layout)


def frames_bytes(frames: Sequence[bytes | memoryview], seq: int) -> bytes:
    parts = [struct.pack("<II", seq, len(frames))]
    for f in frames:
        view = memoryview(f)
        parts.append(struct.pack("<I", view.nbytes))
        parts.append(view.tobytes())
    return b"".join(parts)


# --- results ----------------------------------------------------------------------------------


@dataclass
class Row:
    system: str
    nodes: int
    p50_ms: float
    p99_ms: float
    egress_b: float  # trainer/server bytes per delta
    wan_b: float  # cross-datacenter bytes per delta
    lost: str  # what a restart mid-stream loses
    note: str = ""
    cpu: str = ""


# --- p2prec and the star: bench/mesh_bench.py's members, in worker processes -----------------


def split(names: Sequence[str], args: Args) -> list[list[str]]:
    return cp.interleave(names, lambda name: name.split("-", maxsplit=1)[0], args.workers)


@dataclass
class Mesh:
    """The trainer (this process) and the pool of workers hosting the nodes."""

    trainer: NodeDriver
    pool: cp.Pool
    names: list[str]
    where: dict[str, int]  # node -> worker index
    addrs: list[str]  # every node's address
    counter: mb.SendCount  # the trainer's tree sends

    @property
    def publisher(self) -> Publisher:
        assert isinstance(self.trainer.replica, Publisher)
        return self.trainer.replica

    def head(self) -> tuple[bytes, np.ndarray]:
        store = self.publisher.store
        return store.root, np.array(store.vector_view)

    async def converged(self, names: Sequence[str] | None = None) -> bool:
        root, packed = self.head()
        arg = (root, packed, None if names is None else list(names))
        return all(await self.pool.call_all("converged", [arg] * len(self.pool)))

    async def until_converged(self, names: Sequence[str] | None, what: str) -> None:
        end = time.monotonic() + DEADLINE_S
        while not await self.converged(names):
            if time.monotonic() > end:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    async def members_known(self) -> None:
        want = len(self.names) + 1
        end = time.monotonic() + DEADLINE_S
        while True:
            replica = self.trainer.replica
            mine = 0 if replica is None else len(replica.membership.alive_members())
            if mine >= want and min(await self.pool.call_all("alive")) >= want:
                return
            if time.monotonic() > end:
                raise TimeoutError("timed out waiting for membership")
            await asyncio.sleep(0.05)


async def mesh_phase(
    mesh: Mesh, deltas: Sequence[ParamDelta], rate: float, star: bool
) -> tuple[np.ndarray, float, float]:
    """Publish ``deltas`` at ``rate`` and wait until every node reached every one: latencies
    (ms, wall clock: publish call -> the last node), tree copies per delta sent by the trainer
    and, from every member, across datacenters."""
    marks = [
        (np.asarray(d.shards, dtype=np.int64), np.asarray(d.versions, dtype=np.int64))
        for d in deltas
    ]
    await mesh.pool.call_all("track", [marks] * len(mesh.pool))
    c = mesh.counter
    c.active, c.copies, c.wan, c.from_trainer = True, 0, 0, 0
    published = await publish_paced(len(deltas), rate, partial(mesh_publish, mesh, deltas, star))
    replies = await mesh.pool.call_all("done")
    c.active = False
    reached: dict[str, list[float]] = {}
    wan = c.wan
    for nodes, _copies, worker_wan in replies:
        reached.update(nodes)
        wan += worker_wan
    last = np.max(np.array([reached[n] for n in mesh.names]), axis=0)
    lat = (last - np.array(published)) * 1000.0
    steps = len(deltas)
    if star:  # every node gets a copy from the trainer, all cross into another dc
        assert sum(r[1] for r in replies) == 0, "star deltas must not be relayed"
        return lat, float(len(mesh.names)), float(len(mesh.names))
    return lat, c.from_trainer / steps, wan / steps


def mesh_publish(mesh: Mesh, deltas: Sequence[ParamDelta], star: bool, i: int) -> None:
    delta = deltas[i]
    if star:
        assert mesh.trainer.signer is not None
        frames = list(encode(delta, mesh.trainer.signer))
        mesh.publisher.publish(delta, frames)  # the head steps; its tree sends dropped
        for addr in mesh.addrs:
            mesh.trainer.transport.send(addr, frames, Route.REPAIR)
    else:
        mesh.trainer.publish(delta)


async def publish_paced(count: int, rate: float, publish: Callable[[int], object]) -> list[float]:
    """Call ``publish(i)`` for i < count at ``rate``; the wall time just before each call."""
    loop = asyncio.get_running_loop()
    start, times = loop.time(), []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        times.append(time.time())
        result = publish(i)
        if asyncio.iscoroutine(result):
            await result
    return times


async def run_mesh(
    stream: Stream, signer: Signer, n: int, warm: int, steps: int, outage: int, args: Args
) -> list[Row]:
    rows: list[Row] = []
    per_dc = n // len(mb.DCS)
    names = [f"{dc}-n{i}" for dc in mb.DCS for i in range(1, per_dc + 1)]
    for system in ("p2prec", "star"):
        star = system == "star"
        with tempfile.TemporaryDirectory(prefix="p2prec-compare-") as tmp_name:
            tmp = Path(tmp_name)
            for name in ("trainer", *names):
                generate_node_keys(tmp / "curve", name)
            overrides = {  # every member, the trainer too
                "mesh.wan_uplink_mbit": args.wan_mbit,
                "store.initial_rows": store_rows(args),
            }
            config = mb.make_config(tmp, "trainer", "dc-t", [], "trainer", overrides)
            trainer = NodeDriver(config, signer.verifier(), signer)
            try:
                addr = await trainer.start()
                dc_of_addr = {addr: "dc-t"}
                counter = mb.SendCount(Route.TREE)
                cp.count_sends(trainer, "dc-t", dc_of_addr, counter, True)
                shares = split(names, args)
                specs = [
                    {
                        "tmp": str(tmp),
                        "names": share,
                        "seed": f"trainer@{addr}",
                        "overrides": overrides,
                        "public": signer.public_key_bytes,
                    }
                    for share in shares
                ]
                async with cp.Pool("mesh", specs) as pool:
                    started = await pool.call_all("start")
                    where, addrs = {}, []
                    for w, members in enumerate(started):
                        for name, (node_addr, dc) in members.items():
                            dc_of_addr[node_addr] = dc
                            where[name] = w
                            addrs.append(node_addr)
                    await pool.call_all("dcs", [dc_of_addr] * len(pool))
                    mesh = Mesh(trainer, pool, names, where, addrs, counter)
                    await mesh.members_known()
                    await asyncio.sleep(0.5)  # every view the same: trees agree
                    log(f"{system} N={n}: warm-up ({len(pool)} worker processes)")
                    await mesh_phase(mesh, stream.deltas[:warm], args.rate, star)
                    log(f"{system} N={n}: {steps} deltas")
                    roles = {"members": pool.pids, "trainer": [os.getpid()]}
                    with cp.CpuMeter(roles) as cpu:
                        lat, copies, wan = await mesh_phase(
                            mesh, stream.deltas[warm : warm + steps], args.rate, star
                        )
                    shaped = trainer.transport.counters.shaped
                    assert shaped or args.wan_mbit <= 0, (
                        "the trainer's copies must cross its uplink"
                    )
                    if star:
                        lost = f"{outage} of {outage} (no replay; computed)"
                    else:
                        await mesh.until_converged(None, "p2prec convergence")
                        log(f"{system} N={n}: node cut off for {outage} deltas, catch-up")
                        lost = await run_catch_up(mesh, stream, warm + steps, outage, args.rate)
            finally:
                try:
                    await asyncio.wait_for(trainer.close(), 5.0)
                except TimeoutError:
                    log("the trainer did not close in 5 s")
        rows.append(
            Row(
                system,
                n,
                float(np.percentile(lat, 50)),
                float(np.percentile(lat, 99)),
                copies * stream.wire_bytes,
                wan * stream.wire_bytes,
                lost,
                f"{copies:.2f} / {wan:.2f} copies; " + uplink_load(copies, stream, args, "trainer"),
                cpu.note(),
            )
        )
    return rows


async def run_catch_up(mesh: Mesh, stream: Stream, start: int, outage: int, rate: float) -> str:
    """The victim drops all traffic for ``outage`` deltas of the stream, then heals."""
    victim = mesh.names[-1]
    w = mesh.where[victim]
    await mesh.pool.call(w, "fault", victim)
    others = [x for x in mesh.names if x != victim]
    await mesh.pool.call_all("track", [[]] * len(mesh.pool))
    deltas = stream.deltas[start : start + outage]
    await publish_paced(len(deltas), rate, partial(mesh_publish, mesh, deltas, False))
    await mesh.until_converged(others, "the others converge without the victim")
    root, packed = mesh.head()
    ms = await mesh.pool.call(w, "heal", (victim, root, packed))
    return f"0 of {outage} (caught up in {ms:.0f} ms; measured)"


# --- Redis pub/sub ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def numsub(client: aioredis.Redis) -> int:
    counts = await client.pubsub_numsub(CHANNEL)
    return int(counts[0][1])


async def wait_numsub(client: aioredis.Redis, want: int) -> None:
    end = time.monotonic() + DEADLINE_S
    while await numsub(client) != want:
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {want} subscribers")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[tuple[int, aioredis.Redis, int]]:
    """A redis-server on 127.0.0.1 (random port, no persistence) and a client; stopped by pid."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: apt-get install -y redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            *(exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"),
            *("--client-output-buffer-limit", "pubsub 0 0 0"),  # never drop a slow subscriber
        ],
        stdout=subprocess.DEVNULL,
    )
    pub = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        end = time.monotonic() + 10
        while True:
            try:
                await pub.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.05)
        yield port, pub, proc.pid
    finally:
        await pub.aclose()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.asynccontextmanager
async def wan_ports(port: int, wan_mbit: float) -> AsyncIterator[tuple[int, int, list[int]]]:
    """(port for the trainer's PUBLISH connection, port for dc2/dc3 subscribers): through the
    WAN proxy (the trainer's uplink; the server host's uplink, shared by every remote
    subscriber), in its own process (its pid last), or straight to the server when the WAN is
    unlimited."""
    if wan_mbit <= 0:
        yield port, port, []
        return
    async with cp.Pool("proxy", [{"port": port, "rate": wan_mbit * MBIT}]) as proxy:
        trainer_port, remote_port = await proxy.call(0, "start")
        yield trainer_port, remote_port, proxy.pids


async def run_redis(
    stream: Stream, signer: Signer, n: int, warm: int, steps: int, outage: int, args: Args
) -> Row:
    async with redis_server() as (port, pub, pid), wan_ports(port, args.wan_mbit) as ports:
        roles = {"server": [pid], "proxy": ports[2]}
        return await redis_rounds(
            stream, signer, n, warm, steps, outage, args, pub, port, ports[:2], roles
        )


async def redis_rounds(
    stream: Stream,
    signer: Signer,
    n: int,
    warm: int,
    steps: int,
    outage: int,
    args: Args,
    pub: aioredis.Redis,
    port: int,
    ports: tuple[int, int],
    roles: dict[str, list[int]],
) -> Row:
    """The Redis run: subscribers 0..N/3-1 in dc1 with the server, the others in dc2/dc3
    behind the server's uplink, spread over the workers; the trainer (this process) PUBLISHes
    through its own uplink."""
    trainer_port, remote_port = ports
    per_dc, rate = n // len(mb.DCS), args.rate
    names = [f"dc{1 + i // per_dc}-{i}" for i in range(n)]
    shares = split(names, args)
    index = {name: i for i, name in enumerate(names)}
    specs = [
        {
            "layout": stream.layout,
            "store_rows": store_rows(args),
            "public": signer.public_key_bytes,
            "subs": [(index[x], port if index[x] < per_dc else remote_port) for x in share],
        }
        for share in shares
    ]
    victim = n - 1
    where = next(w for w, share in enumerate(shares) if names[victim] in share)
    publisher = aioredis.Redis(host="127.0.0.1", port=trainer_port)

    async def publish(seq: int) -> None:
        payload = frames_bytes(list(encode(stream.deltas[seq], signer)), seq)
        await publisher.publish(CHANNEL, payload)

    async def paced(first: int, count: int) -> list[float]:
        return await publish_paced(count, rate, lambda i: publish(first + i))

    async def received(first: int, stop: int, skip: int | None = None) -> dict[int, float]:
        replies = await pool.call_all("received", [(first, stop, skip)] * len(pool))
        return {q: max(r[q] for r in replies) for q in range(first, stop)}

    try:
        async with cp.Pool("redis", specs) as pool:
            await pool.call_all("start")
            await wait_numsub(pub, n)
            log(f"redis N={n}: warm-up ({len(pool)} worker processes)")
            await paced(0, warm)
            await received(0, warm)
            info0 = await pub.info("stats")
            log(f"redis N={n}: {steps} deltas")
            roles = {"members": pool.pids, "trainer": [os.getpid()], **roles}
            with cp.CpuMeter(roles) as cpu:
                published = await paced(warm, steps)
                last = await received(warm, warm + steps)
            info1 = await pub.info("stats")
            out_b = int(info1["total_net_output_bytes"]) - int(info0["total_net_output_bytes"])
            lat = [last[warm + i] - t for i, t in enumerate(published)]
            # restart mid-stream: the victim's connection closes, deltas go on, it resubscribes
            log(f"redis N={n}: subscriber away for {outage} deltas")
            await pool.call(where, "down", victim)
            await wait_numsub(pub, n - 1)
            first = warm + steps
            await paced(first, outage)
            await pool.call(where, "up", victim)
            await wait_numsub(pub, n)
            await paced(first + outage, AFTER_OUTAGE)
            await received(first + outage, first + outage + AFTER_OUTAGE, skip=victim)
            await asyncio.sleep(0.5)
            never, gaps = await pool.call(where, "victim", (victim, first, outage))
    finally:
        await publisher.aclose()
    lost = f"{never} of {outage} (measured; then {gaps} later deltas refused: gap)"
    wan_copies = n - n // len(mb.DCS)
    return Row(
        "redis",
        n,
        float(np.percentile(lat, 50)) * 1e3,
        float(np.percentile(lat, 99)) * 1e3,
        out_b / steps,
        wan_copies * stream.wire_bytes,
        lost,
        f"{out_b / steps / stream.wire_bytes:.2f} / {wan_copies} copies; "
        + uplink_load(wan_copies, stream, args, "server"),
        cpu.note(),
    )


# --- the snapshot path (computed) ------------------------------------------------------------


def snapshot_row(stream: Stream, n: int, args: Args) -> Row:
    """A delta waits for the next snapshot (uniform over the period), then for the snapshot's
    copies to the remote datacenters to cross the snapshot host's uplink one after another:
    the last remote node has it ``remote x snapshot / uplink`` after it was taken."""
    rate = args.rate
    remote = n - n // len(mb.DCS)
    per_delta = stream.snapshot_bytes * n / (SNAPSHOT_PERIOD_S * rate)
    wan = stream.snapshot_bytes * remote / (SNAPSHOT_PERIOD_S * rate)
    transfer_s = remote * stream.snapshot_bytes / (args.wan_mbit * MBIT) if args.wan_mbit else 0.0
    return Row(
        "snapshot",
        n,
        (0.5 * SNAPSHOT_PERIOD_S + transfer_s) * 1000,
        (0.99 * SNAPSHOT_PERIOD_S + transfer_s) * 1000,
        per_delta,
        wan,
        "0 (stale up to 60 s; computed)",
        f"computed: {stream.snapshot_bytes} B x {n} / 60 s at {rate:g} deltas/s; "
        f"{remote} WAN copies take {transfer_s:.1f} s on the uplink",
    )


def uplink_load(copies: float, stream: Stream, args: Args, who: str) -> str:
    """The WAN load ``copies`` per delta put on the ``who`` host's uplink."""
    mbit = copies * stream.wire_bytes * args.rate / MBIT
    if args.wan_mbit <= 0:
        return f"{who} uplink {mbit:.0f} Mbit/s (unlimited)"
    share = 100 * mbit / args.wan_mbit
    return f"{who} uplink {mbit:.0f} of {args.wan_mbit:g} Mbit/s ({share:.0f}%)"


# --- report -----------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def kib(b: float) -> str:
    return f"{b / 1024:.1f}"


def print_table(rows: Sequence[Row]) -> None:
    head = (
        f"{'system':9} {'N':>3} {'p50 ms':>9} {'p99 ms':>9} {'egress KiB/delta':>17} "
        f"{'WAN KiB/delta':>14}  restart mid-stream: lost"
    )
    print(head)
    for r in rows:
        stale = " (staleness)" if r.system == "snapshot" else ""
        print(
            f"{r.system:9} {r.nodes:3} {r.p50_ms:9.1f} {r.p99_ms:9.1f} {kib(r.egress_b):>17} "
            f"{kib(r.wan_b):>14}  {r.lost}{stale}"
        )
    print()
    for r in rows:
        if r.note:
            print(f"  {r.system} N={r.nodes}: egress / WAN {r.note}")
        if r.cpu:
            print(f"  {r.system} N={r.nodes}: {r.cpu}")


def plot(rows: Sequence[Row], path: Path, caption: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    systems = ("p2prec", "star", "redis", "snapshot")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    metrics = (
        ("p99_ms", "publish -> applied everywhere p99 (ms)\n(snapshot: staleness p99)"),
        ("egress_b", "trainer/server egress per delta (bytes)"),
        ("wan_b", "cross-datacenter bytes per delta"),
    )
    ns = sorted({r.nodes for r in rows})
    width = 0.8 / len(systems)
    for ax, (attr, title) in zip(axes, metrics, strict=True):
        for k, system in enumerate(systems):
            vals = [
                next(
                    (float(getattr(r, attr)) for r in rows if r.system == system and r.nodes == n),
                    0.0,
                )
                for n in ns
            ]
            ax.bar([i + k * width for i in range(len(ns))], vals, width, label=system)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ns))], [f"N={n}" for n in ns])
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


async def compare_main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    ns = [9] if args.quick else [int(x) for x in args.nodes.split(",")]
    for n in ns:
        if n % len(mb.DCS):
            raise SystemExit(f"--nodes: {n} is not a multiple of {len(mb.DCS)}")
    seconds = 3.0 if args.quick else args.seconds
    steps = max(1, round(seconds * args.rate))
    warm = max(1, round(args.rate))
    total = warm + steps + args.outage + AFTER_OUTAGE
    with tempfile.TemporaryDirectory() as tmp:
        layout = store_layout(mb.make_config(Path(tmp), "x", "dc1", [], "node"))
    t = time.perf_counter()
    stream = build_stream(layout, total, args.rows, args.key_space, args.seed)
    signer = Signer.generate()
    log(
        f"stream: {total} deltas, {stream.wire_bytes / 1024:.1f} KiB each on the wire, "
        f"snapshot {stream.snapshot_bytes / 1024:.0f} KiB, built in {time.perf_counter() - t:.1f} s"
    )
    rows: list[Row] = []
    for n in ns:
        rows += await run_mesh(stream, signer, n, warm, steps, args.outage, args)
        rows.append(await run_redis(stream, signer, n, warm, steps, args.outage, args))
        rows.append(snapshot_row(stream, n, args))
    print(
        f"compare: {steps} measured deltas per system at {args.rate:g}/s after {warm} warm-up, "
        f"~{args.rows} rows x dim {mb.DIM} float32 per delta "
        f"({stream.wire_bytes / 1024:.1f} KiB signed on the wire), seed {args.seed}; "
        f"3 datacenters, 127.0.0.1"
    )
    print(
        f"harness: each system's members (mesh nodes, Redis subscribers) in {args.workers} "
        f"worker processes, one asyncio loop each, every datacenter in every worker; the "
        f"trainer/publisher in the main process; {os.cpu_count()} CPUs"
    )
    per_copy = stream.wire_bytes * args.rate / MBIT
    wan = f"{args.wan_mbit:g} Mbit/s" if args.wan_mbit > 0 else "unlimited"
    print(
        f"WAN uplink per host: {wan} (one copy of the stream: {per_copy:.1f} Mbit/s); "
        "p2prec/star: mesh.wan_uplink_mbit on every member; redis: shaping proxy on the "
        "server's (dc1) and the trainer's uplinks; snapshot: transfer time added"
    )
    print(f"redis-py {redis.__version__} (pinned < 8: no per-message debug formatting)")
    print()
    print_table(rows)
    caption = f"3 datacenters, WAN uplink per host: {wan}; {steps} deltas at {args.rate:g}/s"
    if plot(rows, Path(args.plot), caption):
        print(f"\nplot: {args.plot}")
    else:
        print("\nplot: matplotlib not installed, none saved")
    print(f"ran in {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N=9 only, 3 s of deltas")
    parser.add_argument("--nodes", default="9,18,36", help="mesh sizes, multiples of 3")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured stream length")
    parser.add_argument("--rate", type=float, default=20.0, help="deltas per second")
    parser.add_argument("--rows", type=int, default=1000, help="rows per delta")
    parser.add_argument("--key-space", type=int, default=100_000, help="distinct row ids")
    parser.add_argument("--outage", type=int, default=20, help="deltas while a node is down")
    parser.add_argument(
        "--wan-mbit",
        type=float,
        default=1000.0,
        help="every host's WAN uplink in Mbit/s (0: unlimited); see the module docstring",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes hosting each system's members (default: the CPU count)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="stop (every process started, by pid) after this many seconds "
        "(default: 240 with --quick, else 900)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=str(Path(__file__).with_name("compare.png")))
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    limit = args.time_limit or (240.0 if args.quick else 900.0)
    configure_logging(level="warning")
    try:
        asyncio.run(asyncio.wait_for(compare_main(args), limit))
    except TimeoutError:
        raise SystemExit(f"compare: stopped after the time limit of {limit:g} s") from None


if __name__ == "__main__":
    main()
