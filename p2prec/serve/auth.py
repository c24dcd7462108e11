"""Bearer-token check of the admin calls (``http.admin_token``; empty refuses them all)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from p2prec.serve.responses import error_response

BEARER = "Bearer "
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_refusal(request: web.Request, admin_token: str) -> web.Response | None:
    """None when ``request`` carries the admin token; else the 401 answer to send."""
    header = request.headers.get("Authorization", "")
    given = header[len(BEARER) :] if header.startswith(BEARER) else ""
    if admin_token and given and hmac.compare_digest(given.encode(), admin_token.encode()):
        return None
    response = error_response(401, "admin token missing or wrong")
    response.headers["WWW-Authenticate"] = 'Bearer realm="p2prec-admin"'
    return response


def admin_only(admin_token: str, handler: Handler) -> Handler:
    """``handler`` behind the bearer-token check."""

    async def checked(request: web.Request) -> web.StreamResponse:
        refusal = admin_refusal(request, admin_token)
        return refusal if refusal is not None else await handler(request)

    return checked
