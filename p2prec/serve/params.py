"""Parsing of client parameters: anything wrong raises ``BadParam`` naming the parameter,
which the error middleware turns into ``400 {"error": ..., "param": ...}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson

Consistency = Literal["latest", "validated"]
CONSISTENCIES: tuple[Consistency, ...] = ("latest", "validated")
K_DEFAULT = 10
K_MAX = 1000  # most items one recommendation returns
K_DIGITS_MAX = 24  # longer k texts are refused before int() parses them
SCORE_ITEMS_MAX = 10_000  # most items one score request may list
ID_MIN, ID_MAX = -(1 << 63), (1 << 63) - 1  # ids are int64
ID_TEXT_MAX = 40  # characters of an id given as text (an int64 needs at most 20)
BODY_BYTES_MAX = 1 << 20  # largest JSON body of a query


class BadParam(ValueError):
    """A client parameter is missing or wrong; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_id(param: str, value: Any) -> int:
    """An int64 id, from a JSON integer or a decimal string."""
    if isinstance(value, bool):
        raise BadParam(param, f"{param}: expected an integer id, got {value!r}")
    if isinstance(value, str):
        if len(value) > ID_TEXT_MAX:
            raise BadParam(param, f"{param}: expected an integer id, got {len(value)} characters")
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise BadParam(param, f"{param}: expected an integer id, got {value!r}") from None
    if not isinstance(value, int):
        raise BadParam(param, f"{param}: expected an integer id, got {value!r}")
    if not ID_MIN <= value <= ID_MAX:
        raise BadParam(param, f"{param}: id out of the int64 range, got {value}")
    return value


def required(query: Mapping[str, Any], param: str) -> Any:
    if param not in query:
        raise BadParam(param, f"{param}: missing")
    return query[param]


def parse_k(value: Any) -> int:
    """How many items to return: 1..K_MAX."""
    wrong = BadParam("k", f"k: expected an integer in 1..{K_MAX}, got {value!r:.40}")
    text = str(value).strip()
    if len(text) > K_DIGITS_MAX or not text.isascii():
        raise wrong
    try:
        k = int(text, 10)
    except ValueError:
        raise wrong from None
    if not 1 <= k <= K_MAX:
        raise wrong
    return k


def parse_consistency(value: Any) -> Consistency:
    for choice in CONSISTENCIES:
        if value == choice:
            return choice
    raise BadParam("consistency", f"consistency: expected 'latest' or 'validated', got {value!r}")


def parse_items(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise BadParam("items", f"items: expected a list of integer ids, got {value!r}")
    if len(value) > SCORE_ITEMS_MAX:
        raise BadParam("items", f"items: at most {SCORE_ITEMS_MAX} ids, got {len(value)}")
    return [parse_id("items", item) for item in value]


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (``param`` of the errors: ``body``)."""
    if len(body) > BODY_BYTES_MAX:
        raise BadParam("body", f"body: at most {BODY_BYTES_MAX} bytes, got {len(body)}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadParam("body", f"body: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadParam("body", f"body: expected a JSON object, got {type(data).__name__}")
    return data


def parse_bool(param: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadParam(param, f"{param}: expected true or false, got {value!r}")
    return value


def parse_nonnegative_int(param: str, value: Any, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise BadParam(param, f"{param}: expected an integer in 0..{maximum}, got {value!r}")
    return value
