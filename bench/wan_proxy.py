"""A TCP proxy whose one direction crosses a host's WAN uplink (for ``bench/compare.py``).

The same model as the transport's ``mesh.wan_uplink_mbit``: one FIFO per host
(``p2prec.io.shaper.Uplink``) that releases bytes at the uplink's rate, shared by every
connection of that host. A chunk read from the sending side waits its serialisation delay
(after everything queued before it, from any connection) and is then written to the other side.

Runs in its own thread and event loop (and ``bench/compare.py`` starts it in a process of its
own): it stands for the network, as ZeroMQ's I/O thread and the kernel do for the mesh, so its
copying does not queue behind the benchmark's members or the trainer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from p2prec.io.shaper import Uplink

T = TypeVar("T")
CHUNK_BYTES = 64 * 1024
Direction = Literal["up", "down"]  # up: client -> server crosses the uplink; down: the reverse


class SharedUplink:
    """An ``Uplink`` that coroutines of one loop wait on (``await wait(size)``)."""

    def __init__(self, rate_bytes_s: float) -> None:
        self.uplink: Uplink[asyncio.Future[None]] = Uplink(rate_bytes_s)
        self._timer: asyncio.TimerHandle | None = None

    async def wait(self, size: int) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self.uplink.push(done, "", size, loop.time())
        if self._timer is None:
            self._arm(loop)
        await done

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        at = self.uplink.next_release()
        self._timer = None if at is None else loop.call_at(at, self._release, loop)

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        for done in self.uplink.pop_due(loop.time()):
            if not done.done():
                done.set_result(None)
        self._arm(loop)


@dataclass
class _Route:
    upstream: tuple[str, int]
    uplink: SharedUplink
    direction: Direction


@dataclass
class WanProxy:
    """Listening ports that forward to ``upstream`` through a shared uplink; own thread."""

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _servers: list[asyncio.Server] = field(default_factory=list)
    _conns: set[asyncio.Task[None]] = field(default_factory=set)
    uplinks: dict[str, SharedUplink] = field(default_factory=dict)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop.run_forever, name="wan-proxy")
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def listen(
        self, upstream: tuple[str, int], uplink_name: str, rate_bytes_s: float, direction: Direction
    ) -> int:
        """A port on 127.0.0.1 forwarding to ``upstream``; the ``direction`` side of every
        connection shares the uplink named ``uplink_name`` (made at ``rate_bytes_s``)."""
        return self.call(self._listen(upstream, uplink_name, rate_bytes_s, direction))

    async def _listen(
        self, upstream: tuple[str, int], uplink_name: str, rate_bytes_s: float, direction: Direction
    ) -> int:
        uplink = self.uplinks.setdefault(uplink_name, SharedUplink(rate_bytes_s))
        route = _Route(upstream, uplink, direction)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._conns.add(task)
            try:
                await self._serve(route, reader, writer)
            finally:
                self._conns.discard(task)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self._servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def _serve(
        self, route: _Route, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
    ) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*route.upstream)
        except OSError:
            c_writer.close()
            return
        up = route.uplink if route.direction == "up" else None
        down = route.uplink if route.direction == "down" else None
        pumps = [
            asyncio.create_task(_pump(c_reader, s_writer, up)),
            asyncio.create_task(_pump(s_reader, c_writer, down)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (c_writer, s_writer):
                w.close()

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    def close(self) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(Exception):
            self.call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        self._thread = None


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uplink: SharedUplink | None
) -> None:
    while data := await reader.read(CHUNK_BYTES):
        if uplink is not None:
            await uplink.wait(len(data))
        writer.write(data)
        await writer.drain()
