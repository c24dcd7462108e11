"""Structured logging: structlog, configured once per process (DESIGN.md section 6).

Production writes JSON lines (orjson); development a readable console rendering. Every event
carries ``node`` and ``dc`` (added by a processor, so loggers in every task and thread get them),
``level``, ``logger`` and an ISO UTC ``timestamp``. Records of the standard ``logging`` module
(aiohttp, asyncio) go through the same renderer.

    configure_logging("json", "info", node_id="n1", dc="dc1")
    log = get_logger(__name__)
    log.info("delta_applied", shard=3, rows=1024)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

LogFormat = Literal["json", "console"]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

#: The stdlib handler this module installed, so that reconfiguring replaces only it, and the
#: root logger's level before that.
_handler: logging.Handler | None = None
_root_level = logging.getLogger().level


class _Identity:
    """Processor adding the process-wide node id and datacenter to every event."""

    def __init__(self, node_id: str, dc: str) -> None:
        self.node_id = node_id
        self.dc = dc

    def __call__(self, _logger: Any, _method: str, event: EventDict) -> EventDict:
        event.setdefault("node", self.node_id)
        event.setdefault("dc", self.dc)
        return event


def _logger_name(_logger: Any, _method: str, event: EventDict) -> EventDict:
    """``logger``: bound by ``get_logger`` (as ``logger_name``: structlog reserves ``logger``),
    or the name of a stdlib ``logging`` record."""
    name = event.pop("logger_name", None)
    record = event.get("_record")
    if name is None and record is not None:
        name = record.name
    if name is not None:
        event.setdefault("logger", name)
    return event


def _dumps(obj: MutableMapping[str, Any], **_kw: Any) -> str:
    """orjson, with numpy values natively and anything else as its str()."""
    return orjson.dumps(obj, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _shared_processors(node_id: str, dc: str) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _logger_name,
        _Identity(node_id, dc),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def _renderer(fmt: LogFormat, stream: TextIO) -> list[Processor]:
    if fmt == "json":
        # Structured tracebacks without local variables: locals may hold keys or user data.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        return [tracebacks, structlog.processors.JSONRenderer(_dumps)]
    colors = bool(getattr(stream, "isatty", lambda: False)())
    return [structlog.dev.ConsoleRenderer(colors=colors)]


def _install_stdlib_handler(
    shared: list[Processor], render: list[Processor], level: int, stream: TextIO
) -> None:
    """Route stdlib ``logging`` records through the same processors and renderer."""
    global _handler  # noqa: PLW0603 - one handler per process, replaced on reconfiguration
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream)
    _handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root.addHandler(_handler)
    root.setLevel(level)


def configure_logging(
    fmt: LogFormat = "console",
    level: str = "info",
    node_id: str = "-",
    dc: str = "-",
    *,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and stdlib logging) for the whole process; a second call replaces
    the first. ``stream`` defaults to the current ``sys.stderr`` (stdout is for command output).
    """
    if fmt not in ("json", "console"):
        raise ValueError(f"log format {fmt!r}: expected 'json' or 'console'")
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    out = sys.stderr if stream is None else stream
    shared = _shared_processors(node_id, dc)
    render = _renderer(fmt, out)
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Not cached: module-level loggers must follow a reconfiguration (tests, CLI).
        cache_logger_on_first_use=False,
    )
    _install_stdlib_handler(shared, render, LEVELS[level], out)


def _stderr_logger(*_args: Any) -> structlog.WriteLogger:
    """The unconfigured logger: writes to the current ``sys.stderr`` (looked up on each use, so
    that a replaced stream is followed; stdout is for command output)."""
    return structlog.WriteLogger(sys.stderr)


def _configure_defaults() -> None:
    """Before ``configure_logging``: structlog's console rendering, but at info level and on
    stderr (structlog's own defaults print debug events to stdout)."""
    structlog.reset_defaults()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    """Undo ``configure_logging`` (the unconfigured defaults, our stdlib handler removed)."""
    global _handler  # noqa: PLW0603 - see _install_stdlib_handler
    _configure_defaults()
    if _handler is not None:
        root = logging.getLogger()
        root.removeHandler(_handler)
        root.setLevel(_root_level)
        _handler = None


def get_logger(name: str) -> FilteringBoundLogger:
    """A structlog logger whose events carry ``logger=name``."""
    logger: FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger


if not structlog.is_configured():  # a configuration made before this import is kept
    _configure_defaults()
