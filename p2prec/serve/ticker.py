"""A step run periodically for the life of an aiohttp app (its ``cleanup_ctx``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def ticker(step: Callable[[], None], interval_s: float, name: str) -> CleanupContext:
    """A cleanup context that runs ``step`` every ``interval_s`` while the app is up."""

    async def run(_app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                step()
                await asyncio.sleep(interval_s)

        task = asyncio.create_task(loop(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return run
