"""p2prec against the alternatives, on one stream of deltas (issue 6, item 2).

    python bench/compare.py [--quick] [--nodes 9,18,36] [--wan-mbit 1000]

One stream of signed deltas is built once (seeded, ``make_delta`` from an empty store of the
mesh's layout) and every system gets the same deltas, for meshes of N nodes in 3 datacenters:

- p2prec: ``bench/mesh_bench.py``'s mesh (all ``NodeDriver``s in one process and one asyncio
  loop, CURVE on 127.0.0.1), trainer -> one copy per datacenter -> k-ary tree; Merkle catch-up.
- star: the same mesh, the trainer sends every delta to every node (never relayed).
- Redis pub/sub: a real ``redis-server`` on 127.0.0.1 (random port, no persistence, stopped by
  pid); the trainer PUBLISHes each encoded delta (length-prefixed frames) on one channel; N
  redis-py asyncio subscribers in the same loop decode, verify and apply into a ``ParamStore``.
  redis-py is pinned below 8 (8.1.0 formats every pub/sub message for a debug log, see
  MACHINE-NOTES), the version is printed.
- snapshot: a full-store snapshot to every node every 60 s, COMPUTED from the same stream (the
  snapshot bytes of the store the stream builds), not measured.

WAN model (``--wan-mbit``, the same for every system): on one host over loopback bandwidth is
free, so the one thing a tree saves, the publisher's WAN egress (3 copies instead of N), would
cost nothing and a star could only win. Real hosts reach other datacenters through a bounded
uplink, so every host here gets one: all of a host's sends to another datacenter go through
one FIFO that releases ``--wan-mbit`` (serialisation delay = bytes / rate; LAN sends are free).
The default, 1,000 Mbit/s, is a 1 Gbit/s share of a host's WAN uplink, about 20 times one copy
of the stream (266 KiB x 20 deltas/s = 44 Mbit/s): the headroom a team would give one update
stream. p2prec and star: ``mesh.wan_uplink_mbit`` on every member (the trainer is its own
datacenter, so each of its copies crosses its uplink; p2prec's relays send inside their
datacenter, for free). Redis: the server sits in dc1; its copies to the dc2/dc3 subscribers
cross the server host's uplink, and the trainer's PUBLISH its own: an asyncio TCP proxy in its
own thread (``bench/wan_proxy.py``, the same FIFO) shapes both; dc1's subscribers connect
directly. Snapshot: the WAN copies of each snapshot cross the dc1 host's uplink one after
another, and that transfer time is added to the staleness. No propagation delay is modelled
(the same constant for every system). ``--wan-mbit 0``: unlimited, the old harness.

Latency: publish call (encode + sign included) -> the last node applied the delta. Egress: bytes
sent by the trainer (p2prec, star) or the Redis server (measured, INFO total_net_output_bytes)
per delta. WAN: the trainer sits in its own datacenter for p2prec and star (every trainer copy
crosses); the Redis server and the snapshot job sit in dc1 (copies to dc2, dc3 cross).
Restart: one node is cut off for ``--outage`` deltas; p2prec: catch-up measured, lost = deltas
it still lacks after catch-up; Redis: measured, what the resubscribed client never received;
star: no replay by construction, everything sent while down is lost (computed); snapshot:
nothing lost, the node serves the last snapshot it loads (staleness).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeAlias

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mesh_bench as mb
import redis
import redis.asyncio as aioredis
from wan_proxy import WanProxy

from p2prec.core.fencing import FIRST_EPOCH
from p2prec.io.node import store_layout
from p2prec.io.shaper import MBIT
from p2prec.log import configure_logging
from p2prec.model.layout import StoreLayout
from p2prec.model.snapshot import snapshot_shards
from p2prec.model.store import ParamStore
from p2prec.sim.lineage import make_delta
from p2prec.wire.codec import decode, encode
from p2prec.wire.messages import ParamDelta
from p2prec.wire.signing import Signer, Verifier

Args: TypeAlias = argparse.Namespace
SNAPSHOT_PERIOD_S = 60.0
CHANNEL = "p2prec-deltas"
DEADLINE_S = 60.0
AFTER_OUTAGE = 5  # deltas published after the restart


# --- the stream -------------------------------------------------------------------------------


@dataclass
class Stream:
    deltas: list[ParamDelta]
    wire_bytes: float  # mean encoded (signed) size of a delta
    snapshot_bytes: int  # full snapshot of the store after the whole stream
    layout: StoreLayout


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


def bytes_frames(payload: bytes) -> tuple[int, list[memoryview]]:
    view = memoryview(payload)
    seq, n = struct.unpack_from("<II", view, 0)
    off, frames = 8, []
    for _ in range(n):
        (size,) = struct.unpack_from("<I", view, off)
        frames.append(view[off + 4 : off + 4 + size])
        off += 4 + size
    return seq, frames


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


# --- p2prec and the star: bench/mesh_bench.py -----------------------------------------------


async def run_mesh(
    stream: Stream, signer: Signer, n: int, warm: int, steps: int, outage: int, args: Args
) -> list[Row]:
    rows: list[Row] = []
    per_dc = n // len(mb.DCS)
    rate = args.rate
    for system in ("p2prec", "star"):
        star = system == "star"
        with tempfile.TemporaryDirectory(prefix="p2prec-compare-") as tmp:
            overrides = {"mesh.wan_uplink_mbit": args.wan_mbit}  # every member, the trainer too
            bench = mb.Bench(
                Path(tmp), 1, 1, nodes_per_dc=per_dc, signer=signer, overrides=overrides
            )
            try:
                await mb.start_mesh(bench)
                log(f"{system} N={n}: warm-up")
                await mb.run_mode(bench, "warm-up", warm, rate, stream.deltas[:warm], star)
                log(f"{system} N={n}: {steps} deltas")
                res = await mb.run_mode(
                    bench, system, steps, rate, stream.deltas[warm : warm + steps], star
                )
                assert bench.trainer is not None
                shaped = bench.trainer.transport.counters.shaped
                assert shaped or args.wan_mbit <= 0, "the trainer's copies must cross its uplink"
                if star:
                    lost = f"{outage} of {outage} (no replay; computed)"
                else:
                    await mb.until(partial(bench.converged, bench.names), "p2prec convergence")
                    log(f"{system} N={n}: node cut off for {outage} deltas, catch-up")
                    catch = await run_catch_up(bench, stream, warm + steps, outage, rate)
                    lost = catch
            finally:
                await bench.close()
        rows.append(
            Row(
                system,
                n,
                res.p50,
                res.p99,
                res.publisher_copies * stream.wire_bytes,
                res.wan_copies * stream.wire_bytes,
                lost,
                f"{res.publisher_copies:.2f} / {res.wan_copies:.2f} copies; "
                + uplink_load(res.publisher_copies, stream, args, "trainer"),
            )
        )
    return rows


async def run_catch_up(
    bench: mb.Bench, stream: Stream, start: int, outage: int, rate: float
) -> str:
    """The victim drops all traffic for ``outage`` deltas of the stream, then heals."""
    victim = bench.names[-1]
    driver = bench.nodes[victim]
    driver.transport.set_link_fault("127.0.0.1", drop=True)
    others = [x for x in bench.names if x != victim]
    bench.tracker = mb.Tracker()
    await bench.stream(outage, rate, False, stream.deltas[start : start + outage])
    await mb.until(lambda: bench.converged(others), "the others converge without the victim")
    t = time.perf_counter()
    driver.transport.clear_link_faults()
    await mb.until(lambda: bench.converged([victim]), "the healed node catches up")
    ms = (time.perf_counter() - t) * 1000
    return f"0 of {outage} (caught up in {ms:.0f} ms; measured)"


# --- Redis pub/sub ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Subscriber:
    index: int
    store: ParamStore
    received: dict[int, float] = field(default_factory=dict)
    gaps: int = 0
    down: asyncio.Event = field(default_factory=asyncio.Event)
    up: asyncio.Event = field(default_factory=asyncio.Event)


async def subscribe_loop(
    port: int, sub: Subscriber, verifier: Verifier, stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        client = aioredis.Redis(host="127.0.0.1", port=port)
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
                    sub.received[seq] = loop.time()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py 5.2 stub
            await client.aclose()
        if sub.down.is_set():  # the restart: away until told to come back
            await asyncio.wait_for(sub.up.wait(), DEADLINE_S)
            sub.down.clear()


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
async def redis_server() -> AsyncIterator[tuple[int, aioredis.Redis]]:
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
        yield port, pub
    finally:
        await pub.aclose()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class RedisPublisher:
    pub: aioredis.Redis
    stream: Stream
    signer: Signer
    rate: float
    published: dict[int, float] = field(default_factory=dict)

    async def publish(self, first: int, count: int) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / self.rate - loop.time()))
            seq = first + i
            self.published[seq] = loop.time()
            payload = frames_bytes(list(encode(self.stream.deltas[seq], self.signer)), seq)
            await self.pub.publish(CHANNEL, payload)


async def all_received(seqs: range, who: Sequence[Subscriber]) -> None:
    end = time.monotonic() + DEADLINE_S
    while not all(s in sub.received for sub in who for s in seqs):
        if time.monotonic() > end:
            raise TimeoutError("redis: a subscriber did not receive the stream")
        await asyncio.sleep(0.005)


@contextlib.contextmanager
def wan_ports(port: int, wan_mbit: float) -> Iterator[tuple[int, int]]:
    """(port for the trainer's PUBLISH connection, port for dc2/dc3 subscribers): through the
    WAN proxy (the trainer's uplink; the server host's uplink, shared by every remote
    subscriber), or straight to the server when the WAN is unlimited."""
    if wan_mbit <= 0:
        yield port, port
        return
    proxy = WanProxy()
    proxy.start()
    try:
        upstream = ("127.0.0.1", port)
        rate = wan_mbit * MBIT
        yield (
            proxy.listen(upstream, "trainer", rate, "up"),
            proxy.listen(upstream, "dc1-server", rate, "down"),
        )
    finally:
        proxy.close()


async def run_redis(
    stream: Stream, signer: Signer, n: int, warm: int, steps: int, outage: int, args: Args
) -> Row:
    async with redis_server() as (port, pub):
        with wan_ports(port, args.wan_mbit) as (trainer_port, remote_port):
            return await redis_rounds(
                stream, signer, n, warm, steps, outage, args, pub, port, trainer_port, remote_port
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
    trainer_port: int,
    remote_port: int,
) -> Row:
    """The Redis run: subscribers 0..N/3-1 in dc1 with the server, the others in dc2/dc3
    behind the server's uplink; the trainer PUBLISHes through its own uplink."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    per_dc, rate = n // len(mb.DCS), args.rate
    publisher = aioredis.Redis(host="127.0.0.1", port=trainer_port)
    try:
        subs = [Subscriber(i, ParamStore(stream.layout, capacity_rows=4096)) for i in range(n)]
        verifier = signer.verifier()
        tasks = [
            asyncio.create_task(
                subscribe_loop(port if s.index < per_dc else remote_port, s, verifier, stop)
            )
            for s in subs
        ]
        await wait_numsub(pub, n)
        trainer = RedisPublisher(publisher, stream, signer, rate)
        log(f"redis N={n}: warm-up")
        await trainer.publish(0, warm)
        await all_received(range(warm), subs)
        info0 = await pub.info("stats")
        log(f"redis N={n}: {steps} deltas")
        await trainer.publish(warm, steps)
        measured = range(warm, warm + steps)
        await all_received(measured, subs)
        info1 = await pub.info("stats")
        out_b = int(info1["total_net_output_bytes"]) - int(info0["total_net_output_bytes"])
        lat = [max(s.received[q] for s in subs) - trainer.published[q] for q in measured]
        # restart mid-stream: the victim's connection closes, deltas go on, it resubscribes
        log(f"redis N={n}: subscriber away for {outage} deltas")
        victim = subs[-1]
        victim.down.set()
        await wait_numsub(pub, n - 1)
        first = warm + steps
        await trainer.publish(first, outage)
        victim.up.set()
        await wait_numsub(pub, n)
        await trainer.publish(first + outage, AFTER_OUTAGE)
        await all_received(range(first + outage, first + outage + AFTER_OUTAGE), subs[:-1])
        await asyncio.sleep(0.5)
        never = sum(q not in victim.received for q in range(first, first + outage))
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5.0)
        await publisher.aclose()
    lost = f"{never} of {outage} (measured; then {victim.gaps} later deltas refused: gap)"
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
        f"3 datacenters; one process, one asyncio loop, 127.0.0.1"
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=str(Path(__file__).with_name("compare.png")))
    args = parser.parse_args()
    configure_logging(level="warning")
    asyncio.run(compare_main(args))


if __name__ == "__main__":
    main()
