"""JSON answers (orjson)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def json_response(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(status: int, message: str, **fields: Any) -> web.Response:
    return json_response({"error": message, **fields}, status)
