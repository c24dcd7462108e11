"""The mesh transport: asyncio + pyzmq, CURVE on every socket, bounded, counted (DESIGN.md 3-4).

A thin driver that moves frames between nodes and knows nothing of the protocol.

- In: one ROUTER on ``tcp://{bind_host}:{port}``, a CURVE server whose ZAP handler admits only
  keys of the allow-list (``*.key`` in ``curve_dir``). A message's authenticated sender is the
  node id of its key (ZAP ``User-Id``); an envelope claiming another node id is dropped.
- Out: one DEALER per destination address, made on first use, a CURVE client with this node's
  key pair and the destination's public key; closed when idle or on ``forget``. Sends never
  block: a full queue (``queue_max`` messages) is a counted drop.
- Wire: ``[envelope, *message_frames]``, the envelope orjson ``{"from": "host:port" the sender
  listens on, "node": its id, "route": "tree"|"repair"|"mesh"}``. Frames come in with
  ``copy=False``, so a relay forwards received frames without copying the payload; buffers
  sent from this process are copied into their messages below ``LEND_FROM_BYTES``.

Peer public keys (a CURVE client must know the server's): ``send(peer_key=...)`` when the
caller has it; else the address book, filled by ``add_peer(addr, node_id)`` (that node's key in
the allow-list; the driver calls it when membership announces an address), ``add_peer_key``,
and learned from authenticated inbound messages (envelope ``from`` -> the key it authenticated
with), so answers to a joining node need no announcement. Explicit entries win over learned
ones. No key known: a counted drop (``unknown_key_drops``).

WAN uplink (``wan_uplink_bytes_s`` > 0, from ``mesh.wan_uplink_mbit``): every send to a
WAN-class peer (``peer_class(addr) == "wan"``: another datacenter) goes through one FIFO of this
host's uplink (``p2prec.io.shaper.Uplink``) and reaches its DEALER when its serialisation delay
(bytes / rate, after everything queued before it) has passed; LAN sends bypass it. Nothing is
dropped there but past ``queue_max`` messages queued for one peer (``queue_drops``). A link
fault applies when a message leaves the uplink (a delay then holds it further).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import orjson
import zmq
import zmq.asyncio

from p2prec.core.effects import Route
from p2prec.io.curve import (
    AllowList,
    CurveAuthenticator,
    authenticated_node,
    handshake_refused,
    load_keypair,
    secret_key_file,
    watch_handshakes,
)
from p2prec.io.shaper import MBIT, Uplink
from p2prec.log import get_logger
from p2prec.wire.limits import DEFAULT_LIMITS, WireLimits

if TYPE_CHECKING:
    from p2prec.config import Config

log = get_logger(__name__)

PeerClass: TypeAlias = Literal["lan", "wan"]
#: What ``send`` takes: codec output (bytes, memoryviews) or received frames (forwarded as is).
OutFrame: TypeAlias = bytes | memoryview | zmq.Frame
OnMessage: TypeAlias = Callable[["Envelope", list[zmq.Frame]], None]

ENVELOPE_MAX_BYTES = 1024
ADDR_MAX_CHARS = 255
NODE_MAX_CHARS = 128
#: Time the receive loop handles messages in a row before it yields to other tasks (HTTP
#: requests, timers): a query waits at most about this plus one message. Not smaller: with
#: many drivers in one loop (bench/compare.py, 37 of them) 0.5 ms turned draining into
#: processor sharing, and p50 at 36 nodes went from ~0.2-0.4 s to 2.2-4.7 s.
DRAIN_BUDGET_S = 0.002
#: While this process serves queries (``note_query`` within SERVING_WINDOW_S), the receive
#: loop yields sooner and for longer: after SERVING_DRAIN_BUDGET_S, for SERVING_YIELD_TURNS
#: loop turns. An aiohttp request needs 3 turns (read, start, handle); one ``sleep(0)`` let the
#: next delta in between each of them (measured: /v1/recommend p99 under the update stream
#: 3.3 -> ~2.4-2.5 x idle with these values). A loop that serves no queries keeps the above.
SERVING_DRAIN_BUDGET_S = 0.0005
SERVING_YIELD_TURNS = 4
SERVING_WINDOW_S = 0.1
#: Slack on ZMQ_MAXMSGSIZE (checked per frame, on CURVE's boxed frames).
CURVE_SLACK_BYTES = 256
RECONNECT_IVL_MAX_MS = 2000
#: Buffers below this size are copied into the message a send makes, not lent to libzmq: a
#: lent buffer is held by pyzmq's garbage-collector thread, which takes the GIL once per
#: buffer when libzmq is done with it and stalled the loop of a loaded process (trainer and
#: relays, 13 processes on 2 cores: p99 84-228 ms lent, 57-75 ms copied, alternated runs).
#: Copying 256 KiB costs ~25 us. Received frames are forwarded as they are either way.
LEND_FROM_BYTES = 16 << 20
#: How long ``close`` waits for its tasks to finish before closing the sockets regardless.
CLOSE_WAIT_S = 1.0
_ROUTES = {r.value: r for r in Route}
_PER_CLASS: Callable[[], dict[str, int]] = partial(dict, lan=0, wan=0)
_WILDCARD_HOSTS = ("0.0.0.0", "*", "::", "[::]")
#: A message on the WAN uplink: (address, its key, frames, bytes).
_Queued: TypeAlias = tuple[str, bytes, list[OutFrame], int]


@dataclass(frozen=True, slots=True)
class Envelope:
    """Transport header of a received message."""

    sender: str  # where the sender listens ("host:port"): replies and forwards go there
    node: str  # sender's node id, as it claims (checked against ``peer``)
    route: Route  # how the message travels (the core decides whether to relay it)
    peer: str | None  # authenticated node id: the allow-list name of the sender's CURVE key


@dataclass(frozen=True, slots=True)
class LinkFault:
    """Chaos on one link: ``drop`` discards both ways; ``delay_s`` holds outbound messages."""

    drop: bool = False
    delay_s: float = 0.0


@dataclass
class TransportCounters:
    """Monotonic counters (exported as metrics)."""

    messages_out: dict[str, int] = field(default_factory=_PER_CLASS)
    messages_in: dict[str, int] = field(default_factory=_PER_CLASS)
    bytes_out: dict[str, int] = field(default_factory=_PER_CLASS)
    bytes_in: dict[str, int] = field(default_factory=_PER_CLASS)
    queue_drops: int = 0  # outbound queue full (or delayed queue full)
    fault_drops: int = 0  # discarded by a link fault, either way
    unknown_key_drops: int = 0  # no public key known for the destination
    oversize_drops: int = 0  # outbound message over the wire limits
    send_errors: int = 0  # other zmq errors on send (bad address...)
    refused_by_peer: int = 0  # our handshakes the peer refused (our key not in its allow-list)
    refused_drops: int = 0  # sends to a peer that refused us, before the retry time
    malformed: int = 0  # inbound: bad envelope, frame count or size
    spoofed: int = 0  # inbound: envelope node != authenticated node
    callback_errors: int = 0  # on_message raised
    internal_errors: int = 0  # a bug here, caught so that the receive loop goes on
    auth_denied: int = 0  # CURVE handshakes refused (key not in the allow-list)
    delayed: int = 0  # messages held by a link fault's delay
    shaped: int = 0  # messages queued on the WAN uplink (mesh.wan_uplink_mbit)
    dealers_opened: int = 0
    dealers_closed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Dealer:
    socket: zmq.Socket[bytes]
    monitor: zmq.Socket[bytes]  # handshake failures, read only when a send finds no room
    key: bytes
    last_used: float


def parse_envelope(data: bytes | memoryview, peer: str | None) -> Envelope:
    """The envelope in ``data``; ``ValueError`` if it is not a well-formed one."""
    if memoryview(data).nbytes > ENVELOPE_MAX_BYTES:
        raise ValueError("envelope too large")
    obj = orjson.loads(data)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(obj, dict):
        raise ValueError("envelope is not an object")
    sender, node, route = obj.get("from"), obj.get("node"), obj.get("route")
    if not isinstance(sender, str) or not 3 <= len(sender) <= ADDR_MAX_CHARS or ":" not in sender:
        raise ValueError("envelope 'from' is not a host:port")
    if not isinstance(node, str) or not 1 <= len(node) <= NODE_MAX_CHARS:
        raise ValueError("envelope 'node' is not a node id")
    if not isinstance(route, str) or route not in _ROUTES:
        raise ValueError("envelope 'route' is unknown")
    return Envelope(sender, node, _ROUTES[route], peer)


def _lan(_addr: str) -> PeerClass:
    return "lan"


class Transport:
    """CURVE ROUTER in, one CURVE DEALER per peer out; see the module docstring."""

    def __init__(
        self,
        node_id: str,
        curve_dir: str | Path,
        on_message: OnMessage,
        *,
        bind_host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        queue_max: int = 1024,
        limits: WireLimits = DEFAULT_LIMITS,
        peer_class: Callable[[str], PeerClass] = _lan,
        idle_timeout_s: float = 60.0,
        heartbeat_s: float = 1.0,
        refused_retry_s: float = 2.0,
        wan_uplink_bytes_s: float = 0.0,
    ) -> None:
        """``on_message(envelope, frames)`` runs on the loop for every accepted message and must
        not block; ``peer_class(addr)`` must be cheap and must not raise. A peer that refuses
        our handshake is not tried again for ``refused_retry_s``. ``wan_uplink_bytes_s`` > 0
        shapes sends to WAN-class peers (module docstring); 0: unlimited."""
        host = advertise_host or bind_host
        if host in _WILDCARD_HOSTS:
            raise ValueError(f"bind_host {bind_host!r} is a wildcard: give advertise_host")
        self.node_id = node_id
        self.curve_dir = Path(curve_dir)
        self.counters = TransportCounters()
        self._on_message = on_message
        self._bind_host, self._port, self._host = bind_host, port, host
        self._queue_max, self._limits = queue_max, limits
        self._peer_class, self._idle_timeout_s = peer_class, idle_timeout_s
        self._heartbeat_ms = int(heartbeat_s * 1000)
        self._refused_retry_s = refused_retry_s
        self._refused_until: dict[str, float] = {}  # addr -> loop time of the next attempt
        self._monitor_ids = itertools.count()
        self._max_part = max(limits.max_frame_bytes, limits.max_header_bytes)
        self.addr = ""
        self._state = "new"
        self._keypair = (b"", b"")
        self._allow = AllowList({})
        self._explicit: dict[str, bytes] = {}  # addr -> key, from the owner
        self._learned: dict[str, bytes] = {}  # addr -> key, from authenticated messages
        self._dealers: dict[str, _Dealer] = {}
        self._faults: dict[str, LinkFault] = {}
        self._timers: dict[str, dict[int, asyncio.TimerHandle]] = {}  # delayed sends by addr
        self._timer_ids = itertools.count()
        self._envelopes: dict[Route, bytes] = {}
        self._serving_until = 0.0  # time.perf_counter() until which queries are being served
        self._tasks: list[asyncio.Task[Any]] = []
        self._uplink: Uplink[_Queued] | None = None
        self._uplink_timer: asyncio.TimerHandle | None = None
        if wan_uplink_bytes_s > 0:
            self._uplink = Uplink(wan_uplink_bytes_s)
        self._ctx: zmq.asyncio.Context | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._router_fd: int | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._drain_paused = False  # yielding the loop: _resume_drain will drain
        self._auth: CurveAuthenticator | None = None

    @classmethod
    def from_config(
        cls, config: Config, on_message: OnMessage, peer_class: Callable[[str], PeerClass] = _lan
    ) -> Transport:
        """A transport for this process: ``[node]``, ``[mesh]``, ``[keys]``, ``[wire]``."""
        return cls(
            config.node.id,
            config.keys.curve_dir,
            on_message,
            bind_host=config.mesh.bind_host,
            advertise_host=config.mesh.advertise_host or None,
            port=config.mesh.port,
            queue_max=config.mesh.queue_max,
            limits=config.wire_limits(),
            peer_class=peer_class,
            wan_uplink_bytes_s=config.mesh.wan_uplink_mbit * MBIT,
        )

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> str:
        """Load keys, start ZAP, bind; returns the address peers reach us at ("host:port")."""
        if self._state != "new":
            raise RuntimeError(f"transport is {self._state}, cannot start")
        self._state = "started"
        try:
            return self._start()
        except BaseException:
            await self.close()
            raise

    def _start(self) -> str:
        self._keypair = load_keypair(secret_key_file(self.curve_dir, self.node_id))
        self._allow = AllowList.load(self.curve_dir)
        self._ctx = zmq.asyncio.Context()
        self._auth = CurveAuthenticator(self._ctx, self._allow, self._denied)
        before = asyncio.all_tasks()
        self._auth.start()  # binds the context's ZAP endpoint before any CURVE socket exists
        self._tasks += asyncio.all_tasks() - before  # its poll task, awaited on close
        self._router = self._bind_router(self._ctx)
        self._start_receiving(self._router)
        self._tasks.append(asyncio.create_task(self._reap_loop()))
        log.info("transport_started", addr=self.addr, allowed=len(self._allow))
        return self.addr

    def _bind_router(self, ctx: zmq.asyncio.Context) -> zmq.Socket[bytes]:
        # A plain socket (the context's async sockets are for the ZAP handler): the loop
        # watches its FD itself, see _start_receiving.
        router: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.ROUTER)
        router.curve_server = True
        router.curve_secretkey = self._keypair[1]
        router.rcvhwm = self._queue_max
        router.linger = 0
        router.maxmsgsize = self._max_part + CURVE_SLACK_BYTES
        router.ipv6 = ":" in self._bind_host
        self._router = router
        router.bind(f"tcp://{self._bind_host}:{self._port or '*'}")
        endpoint = router.get(zmq.LAST_ENDPOINT)
        assert isinstance(endpoint, bytes)
        port = int(endpoint.decode().rpartition(":")[2])
        self.addr = f"{self._host}:{port}"
        self._envelopes = {
            r: orjson.dumps({"from": self.addr, "node": self.node_id, "route": r.value})
            for r in Route
        }
        return router

    async def close(self) -> None:
        """Stop everything: tasks, timers, sockets (linger 0), ZAP, context. Idempotent and
        bounded: tasks get ``CLOSE_WAIT_S`` to finish, then the sockets close regardless, also
        when ``close`` itself is cancelled (the cancellation then propagates)."""
        if self._state == "closed":
            return
        self._state = "closed"
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        try:
            if tasks:
                # asyncio.wait: bounded, raises none of the tasks' errors, and lets a
                # cancellation of close() through (gather/wait_for could hide or swallow it).
                _done, pending = await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
                if pending:
                    log.warning("transport_tasks_stuck", addr=self.addr, count=len(pending))
        finally:
            self._release()
        log.info("transport_closed", addr=self.addr)

    def _release(self) -> None:
        """Close every socket, then the context: ``term`` blocks while any socket of the context
        is open, so each one is closed even if closing another fails."""
        with contextlib.ExitStack() as stack:
            self._stop_uplink()
            for addr in list(self._timers):
                self._cancel_delayed(addr)
            if self._ctx is not None:
                stack.callback(self._ctx.destroy, linger=0)  # anything left open, then term
            if self._auth is not None:
                if self._auth.zap_socket is not None:
                    self._auth.zap_socket.linger = 0
                stack.callback(self._auth.stop)  # cancels its task, closes the ZAP socket
            if self._router is not None:
                stack.callback(self._router.close, linger=0)
                stack.callback(self._stop_receiving)  # before the socket closes (LIFO)
            for addr in list(self._dealers):
                stack.callback(self._close_dealer, addr)

    # --- peers and keys ------------------------------------------------------------------------

    def add_peer(self, addr: str, node_id: str) -> bool:
        """Reach ``node_id`` at ``addr`` with its allow-listed key; False if it has none."""
        key = self._allow.key_of(node_id)
        if key is None:
            return False
        self._explicit[addr] = key
        return True

    def has_key_for(self, node_id: str) -> bool:
        """Whether ``node_id`` is allow-listed: a member this transport can reach and hear."""
        return self._allow.key_of(node_id) is not None

    def add_peer_key(self, addr: str, public_key: bytes) -> None:
        """Reach ``addr`` with CURVE server key ``public_key`` (z85)."""
        self._explicit[addr] = public_key

    def peer_key(self, addr: str) -> bytes | None:
        """The key ``send`` would use for ``addr`` without ``peer_key``."""
        return self._explicit.get(addr) or self._learned.get(addr)

    def forget(self, addr: str) -> None:
        """``addr`` is gone: close its DEALER (dropping its queue), its keys, delayed sends."""
        self._close_dealer(addr)
        self._refused_until.pop(addr, None)
        self._explicit.pop(addr, None)
        self._learned.pop(addr, None)
        self._cancel_delayed(addr)
        if self._uplink is not None and self._uplink.discard(lambda a: a != addr):
            self._rearm_uplink()

    def reload_allow_list(self) -> int:
        """Re-read ``curve_dir``'s ``*.key`` files (new nodes); returns how many are allowed.
        Connections already admitted stay up."""
        self._allow = AllowList.load(self.curve_dir)
        if self._auth is not None:
            self._auth.allow_list = self._allow
        return len(self._allow)

    def open_links(self) -> list[str]:
        """Addresses with an open outbound DEALER."""
        return sorted(self._dealers)

    # --- link faults (chaos) -------------------------------------------------------------------

    def set_link_fault(self, addr_or_prefix: str, drop: bool = False, delay_s: float = 0.0) -> None:
        """Fault every link whose address starts with ``addr_or_prefix`` (an exact match wins,
        then the longest prefix): ``drop`` discards outbound messages and inbound ones from it;
        ``delay_s`` holds outbound messages (set it on both ends for a round-trip delay)."""
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        self._faults[addr_or_prefix] = LinkFault(drop, delay_s)
        log.info("link_fault_set", link=addr_or_prefix, drop=drop, delay_s=delay_s)

    def clear_link_faults(self) -> None:
        """Remove every link fault (messages already delayed still go out)."""
        self._faults.clear()
        log.info("link_faults_cleared")

    def _fault_for(self, addr: str) -> LinkFault | None:
        if not self._faults:
            return None
        exact = self._faults.get(addr)
        if exact is not None:
            return exact
        matches = [p for p in self._faults if addr.startswith(p)]
        return self._faults[max(matches, key=len)] if matches else None

    # --- sending -------------------------------------------------------------------------------

    def send(
        self,
        addr: str,
        frames: Sequence[OutFrame],
        route: Route = Route.MESH,
        *,
        peer_key: bytes | None = None,
    ) -> bool:
        """Queue ``frames`` for ``addr`` without blocking and without copying payload buffers
        (do not modify them afterwards). True when queued (or held by a delay fault); False when
        dropped, which the counters record."""
        if self._state != "started":
            raise RuntimeError(f"transport is {self._state}, cannot send")
        key = peer_key or self.peer_key(addr)
        if key is None:
            self._drop("unknown_key_drops", "send_unknown_key", peer=addr)
            return False
        parts = [self._envelopes[route], *frames]
        size = self._checked_size(parts)
        if size is None:
            self._drop("oversize_drops", "send_oversize", peer=addr, frames=len(parts))
            return False
        fault = self._fault_for(addr)
        if fault is not None and fault.drop:
            self.counters.fault_drops += 1
            return False
        if self._uplink is not None and self._peer_class(addr) == "wan":
            return self._shape(addr, key, parts, size)
        return self._dispatch(addr, key, parts, size, fault)

    def _dispatch(
        self, addr: str, key: bytes, parts: list[OutFrame], size: int, fault: LinkFault | None
    ) -> bool:
        if fault is not None and fault.drop:
            self.counters.fault_drops += 1
            return False
        if fault is not None and fault.delay_s > 0:
            return self._send_later(fault.delay_s, addr, key, parts, size)
        return self._send_now(addr, key, parts, size)

    def _checked_size(self, parts: list[OutFrame]) -> int | None:
        if not 3 <= len(parts) <= self._limits.max_frames + 1:
            return None
        sizes = [p.nbytes if isinstance(p, memoryview) else len(p) for p in parts]
        total = sum(sizes)
        if max(sizes) > self._max_part or total > self._limits.max_message_bytes:
            return None
        return total

    def _send_now(self, addr: str, key: bytes, parts: list[OutFrame], size: int) -> bool:
        if self._refused_until and self._still_refused(addr):
            self._drop("refused_drops", "send_refused_link", peer=addr)
            return False
        try:
            dealer = self._dealer(addr, key)
            dealer.send_multipart(parts, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._on_full(addr)
            return False
        except zmq.ZMQError as exc:
            self._drop("send_errors", "send_error", peer=addr, error=str(exc))
            self._close_dealer(addr)
            return False
        cls = self._peer_class(addr)
        self.counters.messages_out[cls] += 1
        self.counters.bytes_out[cls] += size
        return True

    def _send_later(
        self, delay_s: float, addr: str, key: bytes, parts: list[OutFrame], size: int
    ) -> bool:
        pending = self._timers.setdefault(addr, {})
        if len(pending) >= self._queue_max:
            self._drop("queue_drops", "delay_queue_full", peer=addr)
            return False
        ident = next(self._timer_ids)
        loop = asyncio.get_running_loop()
        pending[ident] = loop.call_later(delay_s, self._fire, ident, addr, key, parts, size)
        self.counters.delayed += 1
        return True

    def _fire(self, ident: int, addr: str, key: bytes, parts: list[OutFrame], size: int) -> None:
        pending = self._timers.get(addr, {})
        pending.pop(ident, None)
        if not pending:
            self._timers.pop(addr, None)
        if self._state == "started":
            self._send_now(addr, key, parts, size)

    # --- the WAN uplink --------------------------------------------------------------------------

    @property
    def wan_uplink_bytes_s(self) -> float:
        """The WAN uplink's rate; 0: unlimited."""
        return 0.0 if self._uplink is None else self._uplink.rate_bytes_s

    def uplink_backlog(self) -> tuple[int, int]:
        """Messages and bytes waiting on the WAN uplink."""
        if self._uplink is None:
            return 0, 0
        return self._uplink.queued(), self._uplink.backlog_bytes()

    def set_wan_uplink(self, rate_bytes_s: float) -> None:
        """Shape WAN sends at ``rate_bytes_s`` from now on (queued messages too); 0: unlimited,
        what is queued leaves at once, in order."""
        if rate_bytes_s < 0:
            raise ValueError(f"rate_bytes_s must be >= 0, got {rate_bytes_s}")
        log.info("wan_uplink_set", rate_bytes_s=rate_bytes_s)
        if rate_bytes_s > 0:
            if self._uplink is None:
                self._uplink = Uplink(rate_bytes_s)
            else:
                self._uplink.set_rate(rate_bytes_s)
            self._rearm_uplink()
            return
        uplink, self._uplink = self._uplink, None
        self._stop_uplink()
        if uplink is not None and self._state == "started":
            for queued in uplink.pop_due(float("inf")):
                self._dispatch(*queued, self._fault_for(queued[0]))

    def _shape(self, addr: str, key: bytes, parts: list[OutFrame], size: int) -> bool:
        uplink = self._uplink
        assert uplink is not None
        if uplink.queued(addr) >= self._queue_max:
            self._drop("queue_drops", "uplink_queue_full", peer=addr)
            return False
        uplink.push((addr, key, parts, size), addr, size, asyncio.get_running_loop().time())
        self.counters.shaped += 1
        if self._uplink_timer is None:
            self._arm_uplink()
        return True

    def _arm_uplink(self) -> None:
        at = None if self._uplink is None else self._uplink.next_release()
        if at is not None:
            self._uplink_timer = asyncio.get_running_loop().call_at(at, self._release_uplink)

    def _rearm_uplink(self) -> None:
        if self._uplink_timer is not None:
            self._uplink_timer.cancel()
            self._uplink_timer = None
        if self._state == "started":
            self._arm_uplink()

    def _release_uplink(self) -> None:
        """Timer: hand every message whose serialisation is over to its DEALER, in order."""
        self._uplink_timer = None
        if self._uplink is None or self._state != "started":
            return
        for queued in self._uplink.pop_due(asyncio.get_running_loop().time()):
            self._dispatch(*queued, self._fault_for(queued[0]))
        self._arm_uplink()

    def _stop_uplink(self) -> None:
        if self._uplink_timer is not None:
            self._uplink_timer.cancel()
            self._uplink_timer = None
        if self._uplink is not None:
            self._uplink.clear()

    def _cancel_delayed(self, addr: str) -> None:
        for handle in self._timers.pop(addr, {}).values():
            handle.cancel()

    def _on_full(self, addr: str) -> None:
        """No room: a full queue, or (libzmq does not reconnect after those) a handshake the
        peer refused, which closes the link until ``refused_retry_s`` has passed."""
        dealer = self._dealers[addr]
        if not handshake_refused(dealer.monitor):
            self._drop("queue_drops", "send_queue_full", peer=addr)
            return
        self._close_dealer(addr)
        now = asyncio.get_running_loop().time()
        self._refused_until[addr] = now + self._refused_retry_s
        self._drop("refused_by_peer", "link_refused", peer=addr)
        self.counters.refused_drops += 1

    def _still_refused(self, addr: str) -> bool:
        if self._refused_until.get(addr, -1.0) > asyncio.get_running_loop().time():
            return True
        self._refused_until.pop(addr, None)
        return False

    def _dealer(self, addr: str, key: bytes) -> zmq.Socket[bytes]:
        now = asyncio.get_running_loop().time()
        dealer = self._dealers.get(addr)
        if dealer is not None and dealer.key != key:
            self._close_dealer(addr)  # another node (key) now at this address
            dealer = None
        if dealer is None:
            dealer = self._dealers[addr] = self._open_dealer(addr, key, now)
        dealer.last_used = now
        return dealer.socket

    def _open_dealer(self, addr: str, key: bytes, now: float) -> _Dealer:
        assert self._ctx is not None
        sock: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.DEALER)  # sync: sends never wait
        endpoint = f"inproc://p2prec-link-{id(self)}-{next(self._monitor_ids)}"
        monitor = watch_handshakes(sock, endpoint)
        try:
            sock.curve_publickey, sock.curve_secretkey = self._keypair
            sock.curve_serverkey = key
            sock.sndhwm = self._queue_max
            sock.copy_threshold = LEND_FROM_BYTES
            sock.linger = 0
            sock.reconnect_ivl_max = RECONNECT_IVL_MAX_MS
            sock.heartbeat_ivl = self._heartbeat_ms
            sock.heartbeat_timeout = self._heartbeat_ms * 5
            sock.ipv6 = addr.startswith("[")
            sock.connect(f"tcp://{addr}")
        except BaseException:
            sock.close(linger=0)
            monitor.close(linger=0)
            raise
        self.counters.dealers_opened += 1
        log.debug("link_opened", peer=addr)
        return _Dealer(sock, monitor, key, now)

    def _close_dealer(self, addr: str) -> None:
        dealer = self._dealers.pop(addr, None)
        if dealer is not None:
            try:
                dealer.socket.disable_monitor()
            finally:  # an open socket would block the context's term() forever
                dealer.socket.close(linger=0)
                dealer.monitor.close(linger=0)
            self.counters.dealers_closed += 1
            log.debug("link_closed", peer=addr)

    def close_idle(self, now: float) -> int:
        """Close DEALERs unused since ``now - idle_timeout_s`` (loop time); how many."""
        idle = [
            a
            for a, d in self._dealers.items()
            if now - d.last_used >= self._idle_timeout_s and a not in self._timers
        ]
        for addr in idle:
            self._close_dealer(addr)
        return len(idle)

    async def _reap_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._idle_timeout_s / 2)
            self.close_idle(loop.time())

    # --- receiving -----------------------------------------------------------------------------

    def _start_receiving(self, router: zmq.Socket[bytes]) -> None:
        """Drain the router whenever the loop sees its FD readable. A plain reader, not an
        awaited ``recv`` (zmq.asyncio: a future, a task step and its event handling per
        message, ~40 us of CPU more per message measured at 500 msgs/s). The FD is
        edge-triggered: it signals only when the queue becomes readable again, so each drain
        goes on until EAGAIN or hands over to ``_resume_drain``."""
        fd = router.get(zmq.FD)
        assert isinstance(fd, int)
        self._reader_loop = asyncio.get_running_loop()
        self._reader_loop.add_reader(fd, self._drain)
        self._router_fd = fd
        self._reader_loop.call_soon(self._drain)  # what was queued before the reader was added

    def _stop_receiving(self) -> None:
        if self._router_fd is not None and self._reader_loop is not None:
            if not self._reader_loop.is_closed():
                self._reader_loop.remove_reader(self._router_fd)
            self._router_fd = None

    def _drain(self) -> None:
        """Handle queued messages for up to the drain budget; past it, yield the loop some
        turns (queries, timers, other drivers) and go on then."""
        router = self._router
        if self._drain_paused or router is None or self._router_fd is None:
            return
        yield_at = time.perf_counter() + self.drain_budget_s()
        while True:
            try:
                msg = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._on_raw(msg)
            except Exception:  # defence in depth: receiving must survive anything
                self.counters.internal_errors += 1
                log.exception("receive_error")
            if time.perf_counter() >= yield_at:
                self._drain_paused = True
                self._call_soon(self._resume_drain, self._yield_turns())
                return

    def _call_soon(self, fn: Callable[[int], None], turns: int) -> None:
        assert self._reader_loop is not None
        self._reader_loop.call_soon(fn, turns)

    def _resume_drain(self, turns: int) -> None:
        if turns > 1:
            self._call_soon(self._resume_drain, turns - 1)
            return
        self._drain_paused = False
        self._drain()

    def note_query(self) -> None:
        """A query arrived (the HTTP server calls this): yield to queries for a while."""
        self._serving_until = time.perf_counter() + SERVING_WINDOW_S

    def drain_budget_s(self) -> float:
        """How long the receive loop handles messages in a row before it yields."""
        serving = time.perf_counter() < self._serving_until
        return SERVING_DRAIN_BUDGET_S if serving else DRAIN_BUDGET_S

    def _yield_turns(self) -> int:
        return SERVING_YIELD_TURNS if time.perf_counter() < self._serving_until else 1

    def _on_raw(self, msg: list[zmq.Frame]) -> None:
        envelope = self._envelope(msg)
        if envelope is None:
            return
        fault = self._fault_for(envelope.sender)
        if fault is not None and fault.drop:
            self.counters.fault_drops += 1
            return
        self._learn(envelope)
        cls = self._peer_class(envelope.sender)
        self.counters.messages_in[cls] += 1
        self.counters.bytes_in[cls] += sum(len(f) for f in msg[1:])
        try:
            self._on_message(envelope, msg[2:])
        except Exception:
            self.counters.callback_errors += 1
            log.exception("on_message_error", peer=envelope.sender, node=envelope.peer)

    def _envelope(self, msg: list[zmq.Frame]) -> Envelope | None:
        """The checked envelope of a ROUTER message ``[routing id, envelope, *frames]``."""
        if len(msg) < 2:
            self._drop("malformed", "recv_malformed", reason="no envelope")
            return None
        peer = authenticated_node(msg[1])
        try:
            envelope = parse_envelope(msg[1].buffer, peer)
        except ValueError as exc:
            self._drop("malformed", "recv_malformed", reason=str(exc), node=peer)
            return None
        reason = self._body_problem(msg)
        if reason is not None:
            self._drop("malformed", "recv_malformed", reason=reason, node=peer)
            return None
        if peer is not None and envelope.node != peer:
            self._drop("spoofed", "recv_spoofed", claimed=envelope.node, node=peer)
            return None
        return envelope

    def _body_problem(self, msg: list[zmq.Frame]) -> str | None:
        if not 2 <= len(msg) - 2 <= self._limits.max_frames:
            return f"{len(msg) - 2} message frames"
        if sum(len(f) for f in msg[2:]) > self._limits.max_message_bytes:
            return "message too large"
        return None

    def _learn(self, envelope: Envelope) -> None:
        if envelope.peer is None or envelope.sender in self._explicit:
            return
        key = self._allow.key_of(envelope.peer)
        if key is not None and self._learned.get(envelope.sender) != key:
            self._learned[envelope.sender] = key

    # --- accounting ----------------------------------------------------------------------------

    def _denied(self, _key: bytes) -> None:
        self.counters.auth_denied += 1

    def _drop(self, counter: str, event: str, **fields: Any) -> None:
        """Count a drop; log it at counts 1, 2, 4, 8... (bounded log volume under a flood)."""
        count = getattr(self.counters, counter) + 1
        setattr(self.counters, counter, count)
        if count & (count - 1) == 0:
            log.warning(event, count=count, **fields)
