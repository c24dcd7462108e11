"""Logging: JSON lines with node id, dc, level, ISO UTC timestamp; console rendering; levels."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from p2prec.log import configure_logging, get_logger, reset_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    reset_logging()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_one_object_per_line_with_identity() -> None:
    out = io.StringIO()
    configure_logging("json", "info", node_id="n1", dc="dc9", stream=out)
    log = get_logger("p2prec.test")
    log.info("delta_applied", shard=3, rows=1024)
    log.warning("peer_slow", peer="n2")
    first, second = json_lines(out)
    assert first["event"] == "delta_applied"
    assert (first["shard"], first["rows"]) == (3, 1024)
    assert (first["node"], first["dc"], first["level"]) == ("n1", "dc9", "info")
    assert first["logger"] == "p2prec.test"
    assert (second["event"], second["level"], second["node"]) == ("peer_slow", "warning", "n1")


def test_timestamp_is_iso_utc() -> None:
    out = io.StringIO()
    configure_logging("json", "info", node_id="n1", dc="dc1", stream=out)
    get_logger("t").info("tick")
    (line,) = json_lines(out)
    stamp = datetime.fromisoformat(line["timestamp"])
    assert line["timestamp"].endswith("Z")
    assert stamp.utcoffset() == timedelta(0)


def test_level_filtering() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", node_id="n1", dc="dc1", stream=out)
    log = get_logger("t")
    log.debug("hidden_debug")
    log.info("hidden_info")
    log.error("shown")
    assert [line["event"] for line in json_lines(out)] == ["shown"]


def test_identity_reaches_other_threads() -> None:
    out = io.StringIO()
    configure_logging("json", "info", node_id="n4", dc="dc2", stream=out)
    worker = threading.Thread(target=lambda: get_logger("worker").info("from_thread"))
    worker.start()
    worker.join()
    (line,) = json_lines(out)
    assert (line["event"], line["node"], line["dc"]) == ("from_thread", "n4", "dc2")


def test_module_level_logger_follows_reconfiguration() -> None:
    log = get_logger("early")  # created before configuration, as module-level loggers are
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", node_id="a", dc="dc1", stream=first)
    log.info("one")
    configure_logging("json", "info", node_id="b", dc="dc2", stream=second)
    log.info("two")
    assert [(x["event"], x["node"]) for x in json_lines(first)] == [("one", "a")]
    assert [(x["event"], x["node"]) for x in json_lines(second)] == [("two", "b")]


def test_stdlib_logging_uses_the_same_format() -> None:
    out = io.StringIO()
    configure_logging("json", "info", node_id="n1", dc="dc1", stream=out)
    logging.getLogger("aiohttp.access").info("GET %s", "/query")
    logging.getLogger("aiohttp.access").debug("filtered")
    (line,) = json_lines(out)
    assert (line["event"], line["logger"], line["node"]) == ("GET /query", "aiohttp.access", "n1")


def test_exception_without_locals() -> None:
    out = io.StringIO()
    configure_logging("json", "info", node_id="n1", dc="dc1", stream=out)
    secret = "do-not-log"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("t").exception("failed")
    (line,) = json_lines(out)
    assert line["exception"][0]["exc_type"] == "RuntimeError"
    assert secret not in out.getvalue()


def test_values_json_cannot_encode_are_stringified() -> None:
    np = pytest.importorskip("numpy")
    out = io.StringIO()
    configure_logging("json", "info", node_id="n1", dc="dc1", stream=out)
    get_logger("t").info("odd", obj=object, arr=np.arange(3), n=np.int64(5))
    (line,) = json_lines(out)
    assert line["arr"] == [0, 1, 2]
    assert line["n"] == 5
    assert "object" in line["obj"]


def test_console_renders_readably() -> None:
    out = io.StringIO()
    configure_logging("console", "debug", node_id="n1", dc="dc7", stream=out)
    get_logger("t").debug("delta_applied", shard=3)
    text = out.getvalue()
    assert text.count("\n") == 1
    assert "delta_applied" in text
    assert "shard=3" in text
    assert "node=n1" in text
    assert "dc=dc7" in text
    assert not text.lstrip().startswith("{")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", "loud", node_id="n1", dc="dc1")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", "info", node_id="n1", dc="dc1")  # type: ignore[arg-type]


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info", node_id="n1", dc="dc1")
    get_logger("t").info("to_stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert orjson.loads(captured.err)["event"] == "to_stderr"
