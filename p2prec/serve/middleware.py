"""Middlewares of every app: client errors become 400 JSON naming the parameter, anything
unexpected a logged 500 JSON (nothing a client sends crashes the process), and the latency of
every request goes into the HTTP histogram."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Histogram

from p2prec.log import get_logger
from p2prec.serve.params import BadParam
from p2prec.serve.responses import error_response

log = get_logger("p2prec.serve")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_name(request: web.Request) -> str:
    """The route's path template (bounded label values), or 'unmatched'."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def error_middleware() -> Middleware:
    @web.middleware
    async def handle_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadParam as exc:
            return error_response(400, str(exc), param=exc.param)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, exc.reason)
        except Exception:
            log.exception("http_handler_failed", path=request.path, method=request.method)
            return error_response(500, "internal error")

    return handle_errors


def latency_middleware(histogram: Histogram) -> Middleware:
    @web.middleware
    async def time_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            histogram.labels(request.method, route_name(request), str(status)).observe(
                time.perf_counter() - start
            )

    return time_request


def query_middleware(note_query: Callable[[], None]) -> Middleware:
    """Tell the replication side that queries are being served (``Transport.note_query``):
    it then yields the loop sooner and for longer between deltas."""

    @web.middleware
    async def note(request: web.Request, handler: Handler) -> web.StreamResponse:
        note_query()
        return await handler(request)

    return note
