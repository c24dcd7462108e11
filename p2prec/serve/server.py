"""Start and stop an aiohttp app: on the running event loop (the driver's), or on a thread and
an event loop of its own (``start_server_thread``).

A node's replication loop holds the interpreter for a delta's receive, verification, apply and
persistence (about 1-2 ms); a query answered on that loop waits for all of it. On its own
thread a query waits for the GIL at most one switch interval (``sys.setswitchinterval``) and
for the driver's state lock at most one change of the replica. Handlers that change node state
(admin calls) hand their work to the driver's loop (``NodeDriver.call_in_owner``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from p2prec.config import HttpConfig
from p2prec.io.node import NodeDriver
from p2prec.log import get_logger

log = get_logger("p2prec.serve")
SHUTDOWN_TIMEOUT_S = 2.0
JOIN_TIMEOUT_S = 5.0


class Server(Protocol):
    @property
    def url(self) -> str: ...

    async def stop(self) -> None: ...


@dataclass
class RunningServer:
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()
        log.info("http_stopped", url=self.url)


async def start_server(app: web.Application, http: HttpConfig) -> RunningServer:
    """Serve ``app`` on ``http.host:http.port`` (port 0: a free one); returns its URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, http.host, http.port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    log.info("http_started", url=url)
    return RunningServer(runner, url)


async def serve_http(
    driver: NodeDriver,
    http: HttpConfig,
    make_app: Callable[[], web.Application],
    threaded: bool = False,
) -> Server | None:
    """Start the app of ``driver`` when ``http.enabled`` (``threaded``: on a serving thread),
    and publish its URL in the driver's status (``NodeDriver.http_url``: status.json and
    /v1/status carry it)."""
    if not http.enabled:
        return None
    server: Server
    if threaded:
        server = await start_server_thread(make_app, http)
    else:
        server = await start_server(make_app(), http)
    driver.http_url = server.url
    return server


@dataclass
class ThreadedServer:
    """A ``RunningServer`` on ``loop``, run by ``thread``; ``stop`` from any other loop."""

    server: RunningServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def native_id(self) -> int | None:
        return self.thread.native_id

    async def stop(self) -> None:
        """Stop the app (its cleanup contexts run on its own loop), then the loop and thread."""
        if not self.loop.is_running():
            return
        stopped = asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop)
        try:
            await asyncio.wrap_future(stopped)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            await asyncio.to_thread(self.thread.join, JOIN_TIMEOUT_S)
            if self.thread.is_alive():
                log.error("serving_thread_stuck", wait_s=JOIN_TIMEOUT_S)


async def start_server_thread(
    make_app: Callable[[], web.Application], http: HttpConfig, name: str = "p2prec-http"
) -> ThreadedServer:
    """Start a thread that builds ``make_app()`` and serves it on ``http.host:http.port``;
    returns once it listens (or raises what stopped it from listening)."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[RunningServer] = concurrent.futures.Future()
    thread = threading.Thread(
        target=_serve, args=(loop, make_app, http, started), name=name, daemon=True
    )
    thread.start()
    try:
        server = await asyncio.wrap_future(started)
    except BaseException:
        await asyncio.to_thread(thread.join, JOIN_TIMEOUT_S)
        raise
    return ThreadedServer(server, loop, thread)


def _serve(
    loop: asyncio.AbstractEventLoop,
    make_app: Callable[[], web.Application],
    http: HttpConfig,
    started: concurrent.futures.Future[RunningServer],
) -> None:
    asyncio.set_event_loop(loop)
    try:
        try:
            server = loop.run_until_complete(start_server(make_app(), http))
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(server)
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
