"""The CURVE transport with real sockets on 127.0.0.1 (random ports, no sleeps: every wait is a
condition with a deadline). Each test runs its own event loop through ``run``."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import pytest
import zmq
from zmq.utils.garbage import gc as pyzmq_collector

from p2prec.config import load_config
from p2prec.core.effects import Route
from p2prec.io import transport
from p2prec.io.curve import generate_node_keys, load_keypair, load_public_key, public_key_file
from p2prec.io.transport import (
    SERVING_DRAIN_BUDGET_S,
    SERVING_YIELD_TURNS,
    Envelope,
    PeerClass,
    Transport,
    parse_envelope,
)
from p2prec.wire.codec import decode, encode
from p2prec.wire.limits import WireLimits
from p2prec.wire.messages import ControlRequest, ShardSnapshot

T = TypeVar("T")
TEST_TIMEOUT_S = 15.0
WAIT_S = 5.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(TEST_TIMEOUT_S):  # no extra task, unlike wait_for
            return await coro

    return asyncio.run(bounded())


async def eventually(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Await ``condition`` (polled every few ms) or fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def msg(text: str) -> list[bytes]:
    """Two frames, as the codec makes at least (header, signature)."""
    return [text.encode(), b""]


@dataclass
class Received:
    envelope: Envelope
    frames: list[bytes]
    at: float


class Node:
    """A transport and what it received."""

    def __init__(self, name: str, curve_dir: Path, **kwargs: Any) -> None:
        self.name = name
        self.inbox: list[Received] = []
        self.hook: Callable[[Envelope, list[zmq.Frame]], None] | None = None
        self.t = Transport(name, curve_dir, self._on_message, **kwargs)

    def _on_message(self, envelope: Envelope, frames: list[zmq.Frame]) -> None:
        now = asyncio.get_running_loop().time()
        self.inbox.append(Received(envelope, [f.bytes for f in frames], now))
        if self.hook is not None:
            self.hook(envelope, frames)

    @property
    def addr(self) -> str:
        return self.t.addr

    def texts(self) -> list[bytes]:
        return [r.frames[0] for r in self.inbox]

    async def wait_for(self, text: str) -> Received:
        await eventually(lambda: text.encode() in self.texts(), f"{text!r} at {self.name}")
        return next(r for r in self.inbox if r.frames[0] == text.encode())


@asynccontextmanager
async def cluster(curve_dir: Path, *names: str, **kwargs: Any) -> AsyncIterator[list[Node]]:
    """Started nodes (keys made in ``curve_dir`` when missing); on exit every node is closed and
    no task started since entry may be left running."""
    before = asyncio.all_tasks()
    for name in names:
        if not public_key_file(curve_dir, name).exists():
            generate_node_keys(curve_dir, name)
    nodes = [Node(name, curve_dir, **kwargs) for name in names]
    try:
        for node in nodes:
            await node.t.start()
        yield nodes
    finally:
        for node in nodes:
            await node.t.close()
            await node.t.close()  # idempotent
    assert asyncio.all_tasks() <= before


def connect(a: Node, b: Node) -> None:
    assert a.t.add_peer(b.addr, b.name)


# --- delivery ----------------------------------------------------------------------------------


def test_messages_go_both_ways_authenticated(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, "a", "b", peer_class=lambda _addr: "wan") as (a, b):
            connect(a, b)
            assert a.t.send(b.addr, msg("hello"), Route.TREE)
            got = await b.wait_for("hello")
            assert got.envelope == Envelope(a.addr, "a", Route.TREE, peer="a")
            assert got.frames == [b"hello", b""]
            # b learned a's key from the authenticated message: it can answer without add_peer.
            assert b.t.peer_key(a.addr) == load_public_key(public_key_file(tmp_path, "a"))
            assert b.t.send(a.addr, msg("back"), Route.REPAIR)
            back = await a.wait_for("back")
            assert back.envelope == Envelope(b.addr, "b", Route.REPAIR, peer="b")
            assert a.t.counters.messages_out == {"lan": 0, "wan": 1}
            assert b.t.counters.messages_in == {"lan": 0, "wan": 1}
            assert a.t.counters.bytes_out["wan"] == b.t.counters.bytes_in["wan"] > 5
            assert a.t.counters.dealers_opened == 1

    run(main())


def test_unknown_key_cannot_deliver(tmp_path: Path) -> None:
    allowed, rogue_dir = tmp_path / "allowed", tmp_path / "rogue"
    generate_node_keys(rogue_dir, "rogue")

    async def main() -> None:
        async with cluster(allowed, "a", "b") as (a, b), cluster(rogue_dir, "rogue") as (rogue,):
            b_key = load_public_key(public_key_file(allowed, "b"))
            assert rogue.t.send(b.addr, msg("intruder"), peer_key=b_key)  # queued, never admitted
            await eventually(lambda: b.t.counters.auth_denied >= 1, "the handshake refused")
            connect(a, b)
            assert a.t.send(b.addr, msg("friend"))
            await b.wait_for("friend")  # the synchronisation point: an admitted peer got through
            assert b.texts() == [b"friend"]
            assert b.t.counters.malformed == b.t.counters.spoofed == 0
            # No key known for an address: a counted drop, nothing opened.
            assert not a.t.send("127.0.0.1:1", msg("nobody"))
            assert a.t.counters.unknown_key_drops == 1
            assert a.t.open_links() == [b.addr]

    run(main())


def test_refused_link_is_retried_after_the_allow_list_is_reloaded(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, "b") as (b,):
            generate_node_keys(tmp_path, "late")  # after b loaded its allow-list
            async with cluster(tmp_path, "late", refused_retry_s=0.05) as (late,):
                late.t.add_peer_key(b.addr, load_public_key(public_key_file(tmp_path, "b")))
                assert late.t.send(b.addr, msg("knock"))
                await eventually(lambda: b.t.counters.auth_denied == 1, "the first refusal")
                # libzmq gives a refused connection up; a send notices (no room) and backs off.
                await eventually(lambda: not late.t.send(b.addr, msg("knock")), "the give-up")
                assert late.t.counters.refused_by_peer == late.t.counters.refused_drops == 1
                assert late.t.open_links() == []
                assert b.t.reload_allow_list() == 2
                # After refused_retry_s a new link is made, and now admitted.
                await eventually(
                    lambda: late.t.send(b.addr, msg("knock")) and b.texts() != [], "admission"
                )
                assert b.inbox[0].envelope.peer == "late"
                assert late.t.counters.refused_drops >= 1

    run(main())


def test_relay_forwards_received_frames_untouched(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    payload = rng.bytes(3 << 20)
    frames = encode(ShardSnapshot(shard=5, version=42, data=payload), None)

    async def main() -> None:
        async with cluster(tmp_path, "a", "b", "c") as (a, b, c):
            connect(a, b)
            connect(b, c)
            forwarded: list[list[zmq.Frame]] = []

            def relay(envelope: Envelope, received: list[zmq.Frame]) -> None:
                forwarded.append(received)
                b.t.send(c.addr, received, envelope.route)

            b.hook = relay
            assert a.t.send(b.addr, frames, Route.TREE)
            await eventually(lambda: len(c.inbox) == 1, "the forwarded snapshot")
            assert all(isinstance(f, zmq.Frame) for f in forwarded[0])
            got = c.inbox[0]
            assert got.envelope == Envelope(b.addr, "b", Route.TREE, peer="b")
            assert got.frames == [bytes(f) for f in frames]
            snapshot = decode(got.frames, None)
            assert isinstance(snapshot, ShardSnapshot)
            assert bytes(snapshot.data) == payload
            assert b.t.counters.bytes_out["lan"] == c.t.counters.bytes_in["lan"] > 3 << 20

    run(main())


# --- bounds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("lend_from_bytes", [transport.LEND_FROM_BYTES, 1024])
def test_buffers_are_copied_into_messages_not_lent_to_pyzmqs_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lend_from_bytes: int
) -> None:
    """A lent buffer waits in pyzmq's garbage collector (its thread takes the GIL for each)
    until libzmq is done with it; a message queued for an absent peer keeps it there."""
    monkeypatch.setattr(transport, "LEND_FROM_BYTES", lend_from_bytes)
    generate_node_keys(tmp_path, "b")

    async def main() -> None:
        async with cluster(tmp_path, "a") as (a,):
            async with cluster(tmp_path, "b") as (b,):
                gone = b.addr
            a.t.add_peer(gone, "b")
            lent_before = len(pyzmq_collector.refs)
            assert a.t.send(gone, [*msg("x"), np.ones(64 << 10).data])  # 512 KiB, queued
            lent = len(pyzmq_collector.refs) - lent_before
            assert lent == (1 if lend_from_bytes < 512 << 10 else 0)

    run(main())


def test_full_queue_to_an_absent_peer_drops_and_never_blocks(tmp_path: Path) -> None:
    generate_node_keys(tmp_path, "b")

    async def main() -> None:
        async with cluster(tmp_path, "a", queue_max=4) as (a,):
            async with cluster(tmp_path, "b") as (b,):
                gone = b.addr
            a.t.add_peer(gone, "b")
            started = time.perf_counter()
            sent = [a.t.send(gone, msg(f"m{i}")) for i in range(500)]
            assert time.perf_counter() - started < 1.0
            drops = a.t.counters.queue_drops
            assert sent.count(True) + drops == 500
            assert 1 <= sent.count(True) <= 8
            assert a.t.counters.messages_out["lan"] == sent.count(True)

    run(main())


def test_full_queue_to_a_busy_peer_drops_then_delivers_the_rest(tmp_path: Path) -> None:
    big = [*msg("x"), os.urandom(256 << 10)]

    async def main() -> None:
        async with cluster(tmp_path, "a", "b", queue_max=2) as (a, b):
            connect(a, b)
            # The loop does not run during this burst, so b does not read.
            sent = [a.t.send(b.addr, big) for _ in range(200)]
            accepted = sent.count(True)
            assert a.t.counters.queue_drops == 200 - accepted > 0
            await eventually(lambda: len(b.inbox) == accepted, "every accepted message")

    run(main())


def test_oversized_messages_are_refused_both_ways(tmp_path: Path) -> None:
    small = WireLimits(max_frame_bytes=4096, max_header_bytes=4096, max_message_bytes=6000)
    generate_node_keys(tmp_path, "b")

    async def main() -> None:
        async with cluster(tmp_path, "a") as (a,), cluster(tmp_path, "b", limits=small) as (b,):
            connect(a, b)
            connect(b, a)
            assert not b.t.send(a.addr, [b"h", b"", bytes(5000)])  # one frame over the limit
            assert not b.t.send(a.addr, [b"h", b"", bytes(3000), bytes(3000)])  # total over
            assert not b.t.send(a.addr, [b"only one frame"])
            assert b.t.counters.oversize_drops == 3
            assert a.t.send(b.addr, [b"too-big", b"", bytes(3000), bytes(3000)])
            assert a.t.send(b.addr, msg("fits"))
            await b.wait_for("fits")
            assert b.texts() == [b"fits"]
            assert b.t.counters.malformed == 1

    run(main())


# --- link faults -------------------------------------------------------------------------------


def test_link_fault_drop_both_ways(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, "a", "b") as (a, b):
            connect(a, b)
            a.t.set_link_fault(b.addr, drop=True)
            assert not a.t.send(b.addr, msg("lost-out"))
            assert a.t.counters.fault_drops == 1
            a.t.clear_link_faults()
            assert a.t.send(b.addr, msg("after-out"))
            await b.wait_for("after-out")
            b.t.set_link_fault("127.0.0.1:", drop=True)  # a prefix: every local peer
            assert a.t.send(b.addr, msg("lost-in"))
            await eventually(lambda: b.t.counters.fault_drops == 1, "the inbound drop")
            b.t.clear_link_faults()
            assert a.t.send(b.addr, msg("after-in"))
            await b.wait_for("after-in")
            assert b.texts() == [b"after-out", b"after-in"]

    run(main())


def test_link_fault_delay_holds_outbound_messages(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, "a", "b") as (a, b):
            connect(a, b)
            a.t.set_link_fault("127.0.0.1", drop=True)
            a.t.set_link_fault(b.addr, delay_s=0.2)  # the exact address wins over the prefix
            sent_at = asyncio.get_running_loop().time()
            assert a.t.send(b.addr, msg("slow"))
            assert a.t.counters.delayed == 1
            got = await b.wait_for("slow")
            assert 0.2 <= got.at - sent_at < 0.2 + WAIT_S
            assert a.t.counters.fault_drops == 0
            with pytest.raises(ValueError, match="delay_s"):
                a.t.set_link_fault(b.addr, delay_s=-1)

    run(main())


# --- WAN uplink --------------------------------------------------------------------------------


def test_wan_uplink_holds_wan_sends_in_order_and_lan_sends_bypass_it(tmp_path: Path) -> None:
    async def main() -> None:
        wan: set[str] = set()

        def peer_class(addr: str) -> PeerClass:
            return "wan" if addr in wan else "lan"

        async with cluster(tmp_path, "a", "b", "c", peer_class=peer_class, queue_max=3) as nodes:
            a, b, c = nodes
            connect(a, b)
            connect(a, c)
            wan.add(b.addr)
            a.t.set_wan_uplink(1.0)  # 1 byte/s: nothing leaves it during the test
            for text in ("wan-1", "wan-2", "wan-3"):
                assert a.t.send(b.addr, msg(text))
            assert not a.t.send(b.addr, msg("wan-4"))  # queue_max messages for b: dropped
            assert a.t.counters.queue_drops == 1
            assert a.t.send(c.addr, msg("lan"))  # LAN: straight to its DEALER
            await c.wait_for("lan")
            assert a.t.counters.shaped == 3
            queued, nbytes = a.t.uplink_backlog()
            assert queued == 3 and nbytes > 0
            assert a.t.counters.bytes_out["wan"] == 0 and b.inbox == []
            a.t.set_wan_uplink(0)  # unlimited: what is queued leaves at once, in order
            await eventually(lambda: len(b.inbox) == 3, "the queued WAN messages")
            assert b.texts() == [b"wan-1", b"wan-2", b"wan-3"]
            assert a.t.counters.bytes_out["wan"] == nbytes
            assert a.t.uplink_backlog() == (0, 0)

    run(main())


def test_wan_uplink_releases_on_its_timer_and_forget_discards(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, "a", "b", peer_class=lambda _addr: "wan") as (a, b):
            connect(a, b)
            a.t.set_wan_uplink(10e6)
            assert a.t.wan_uplink_bytes_s == 10e6
            for i in range(20):
                assert a.t.send(b.addr, msg(f"m{i}"))
            await eventually(lambda: len(b.inbox) == 20, "every message through the uplink")
            assert b.texts() == [f"m{i}".encode() for i in range(20)]
            a.t.set_wan_uplink(1.0)
            assert a.t.send(b.addr, msg("held"))
            a.t.forget(b.addr)
            assert a.t.uplink_backlog() == (0, 0)

    run(main())


def test_wan_uplink_from_config(tmp_path: Path) -> None:
    generate_node_keys(tmp_path, "n")
    base = {"node.id": "n", "keys.curve_dir": str(tmp_path)}
    config = load_config("local", {**base, "mesh.wan_uplink_mbit": 8.0})
    t = Transport.from_config(config, lambda _e, _f: None)
    assert t.wan_uplink_bytes_s == 1e6
    plain = Transport.from_config(load_config("local", base), lambda _e, _f: None)
    assert plain.wan_uplink_bytes_s == 0.0
    with pytest.raises(ValueError, match="rate_bytes_s"):
        plain.set_wan_uplink(-1.0)


# --- hostile input -----------------------------------------------------------------------------


def raw_dealer(ctx: zmq.Context[zmq.Socket[bytes]], curve_dir: Path, name: str, to: Node) -> Any:
    """A CURVE client with ``name``'s allowed key that sends whatever the test wants."""
    sock = ctx.socket(zmq.DEALER)
    sock.curve_publickey, sock.curve_secretkey = load_keypair(curve_dir / f"{name}.key_secret")
    sock.curve_serverkey = load_public_key(public_key_file(curve_dir, to.name))
    sock.linger = 0
    sock.connect(f"tcp://{to.addr}")
    return sock


def envelope(node: str = "a", route: str = "mesh", sender: str = "127.0.0.1:9") -> bytes:
    return orjson.dumps({"from": sender, "node": node, "route": route})


GARBAGE: list[list[bytes]] = [
    [b"not json", b"h", b""],
    [b"[1, 2]", b"h", b""],
    [orjson.dumps({"from": 1, "node": "a", "route": "mesh"}), b"h", b""],
    [envelope(sender="no-port"), b"h", b""],
    [envelope(route="teleport"), b"h", b""],
    [envelope(node=""), b"h", b""],
    [b"{" * 2000, b"h", b""],
    [envelope()],  # no message frames
    [envelope(), b"h"],  # one message frame
    [envelope(), *([b""] * 300)],  # over max_frames
]


def test_garbage_is_counted_and_survived(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, "a", "b") as (a, b):
            ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
            sock = raw_dealer(ctx, tmp_path, "a", b)
            try:
                for frames in GARBAGE:
                    sock.send_multipart(frames)
                sock.send_multipart([envelope(node="b"), b"spoof", b""])  # a posing as b
                sock.send_multipart([envelope(), b"valid", b""])
                await b.wait_for("valid")
            finally:
                ctx.destroy(linger=0)
            _, writer = await asyncio.open_connection(*b.addr.split(":"))
            writer.write(os.urandom(4096))  # not even ZMTP
            await writer.drain()
            writer.close()
            connect(a, b)
            assert a.t.send(b.addr, msg("still-alive"))
            await b.wait_for("still-alive")
            assert b.texts() == [b"valid", b"still-alive"]
            assert b.t.counters.malformed == len(GARBAGE)
            assert b.t.counters.spoofed == 1

    run(main())


def test_a_failing_callback_is_counted_and_survived(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, "a", "b") as (a, b):
            connect(a, b)

            def explode(_envelope: Envelope, frames: list[zmq.Frame]) -> None:
                if frames[0].bytes == b"boom":
                    raise RuntimeError("owner bug")

            b.hook = explode
            assert a.t.send(b.addr, msg("boom"))
            assert a.t.send(b.addr, msg("fine"))
            await b.wait_for("fine")
            assert b.t.counters.callback_errors == 1

    run(main())


def test_parse_envelope() -> None:
    assert parse_envelope(envelope(), "a") == Envelope("127.0.0.1:9", "a", Route.MESH, "a")
    assert parse_envelope(memoryview(envelope(route="tree")), None).route is Route.TREE
    with pytest.raises(ValueError, match="too large"):
        parse_envelope(b" " * 2000, None)


# --- links and lifecycle -----------------------------------------------------------------------


def test_idle_and_forgotten_links_are_closed(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with cluster(tmp_path, "a", "b", "c", idle_timeout_s=30.0) as (a, b, c):
            connect(a, b)
            connect(a, c)
            assert a.t.send(b.addr, msg("one"))
            assert a.t.send(c.addr, msg("one"))
            assert a.t.open_links() == sorted([b.addr, c.addr])
            assert a.t.close_idle(loop.time()) == 0
            assert a.t.close_idle(loop.time() + 30.0) == 2
            assert a.t.open_links() == []
            assert a.t.send(b.addr, msg("two"))  # reopened on demand
            await b.wait_for("two")
            a.t.forget(b.addr)
            assert a.t.open_links() == []
            assert not a.t.send(b.addr, msg("three"))
            assert a.t.counters.unknown_key_drops == 1
            assert a.t.counters.dealers_opened == 3
            assert a.t.counters.dealers_closed == 3

    run(main())


def test_lifecycle(tmp_path: Path) -> None:
    generate_node_keys(tmp_path, "a")

    async def main() -> None:
        t = Transport("a", tmp_path, lambda _e, _f: None)
        with pytest.raises(RuntimeError, match="new"):
            t.send("127.0.0.1:1", msg("early"))
        addr = await t.start()
        assert addr == t.addr
        assert addr.startswith("127.0.0.1:")
        assert int(addr.rpartition(":")[2]) > 0
        with pytest.raises(RuntimeError, match="started"):
            await t.start()
        await t.close()
        await t.close()
        with pytest.raises(RuntimeError, match="closed"):
            t.send(addr, msg("late"))
        missing = Transport("nokey", tmp_path, lambda _e, _f: None)
        with pytest.raises(FileNotFoundError, match=r"nokey\.key_secret"):
            await missing.start()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main())
    with pytest.raises(ValueError, match="advertise_host"):
        Transport("a", tmp_path, lambda _e, _f: None, bind_host="0.0.0.0")


def test_control_message_roundtrip_through_the_codec(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, "a", "b") as (a, b):
            connect(a, b)
            assert a.t.send(b.addr, encode(ControlRequest("a", 3), None), Route.REPAIR)
            await eventually(lambda: len(b.inbox) == 1, "the control request")
            request = decode(b.inbox[0].frames, None)
            assert isinstance(request, ControlRequest)
            assert (request.sender, request.epoch) == ("a", 3)

    run(main())


def test_from_config_binds_where_the_config_says(tmp_path: Path) -> None:
    generate_node_keys(tmp_path, "n7")
    config = load_config(
        "local",
        {"node.id": "n7", "keys.curve_dir": str(tmp_path), "mesh.queue_max": 8},
    )

    async def main() -> None:
        t = Transport.from_config(config, lambda _e, _f: None)
        try:
            addr = await t.start()
            assert addr.startswith(f"{config.mesh.bind_host}:")
            assert t.node_id == "n7"
        finally:
            await t.close()

    run(main())


def test_while_serving_queries_the_receive_loop_yields_turns_between_heavy_messages(
    tmp_path: Path,
) -> None:
    """A delta holds the loop ~1 ms; an HTTP request needs several loop turns. While the
    process serves queries, the receive loop gives other tasks SERVING_YIELD_TURNS turns
    after any message that ran past SERVING_DRAIN_BUDGET_S."""

    async def main() -> None:
        async with cluster(tmp_path, "a", "b") as (a, b):
            connect(a, b)
            turns = 0
            seen: list[int] = []

            async def other_task() -> None:
                nonlocal turns
                while True:
                    turns += 1
                    await asyncio.sleep(0)

            def heavy(envelope: Envelope, frames: list[zmq.Frame]) -> None:
                seen.append(turns)
                end = time.perf_counter() + 2 * SERVING_DRAIN_BUDGET_S
                while time.perf_counter() < end:  # CPU work, as applying a delta
                    pass

            b.hook = heavy
            ticker = asyncio.create_task(other_task())
            b.t.note_query()
            for i in range(6):
                assert a.t.send(b.addr, msg(f"m{i}"), Route.TREE)
            await b.wait_for("m5")
            ticker.cancel()
            gaps = [later - earlier for earlier, later in itertools.pairwise(seen)]
            assert min(gaps) >= SERVING_YIELD_TURNS - 1, gaps

    run(main())
