"""Start and stop an aiohttp app on the running event loop (the driver's loop)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from p2prec.config import HttpConfig
from p2prec.io.node import NodeDriver
from p2prec.log import get_logger

log = get_logger("p2prec.serve")
SHUTDOWN_TIMEOUT_S = 2.0


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
    driver: NodeDriver, http: HttpConfig, make_app: Callable[[], web.Application]
) -> RunningServer | None:
    """Start the app of ``driver`` when ``http.enabled``, and publish its URL in the driver's
    status (``NodeDriver.http_url``: status.json and /v1/status carry it)."""
    if not http.enabled:
        return None
    server = await start_server(make_app(), http)
    driver.http_url = server.url
    return server
