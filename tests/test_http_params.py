"""Parameter parsing of the HTTP API: every refusal names its parameter; no input raises
anything but ``BadParam``."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2prec.config import ConfigError, load_config
from p2prec.serve.params import (
    K_MAX,
    BadParam,
    parse_consistency,
    parse_id,
    parse_items,
    parse_json_object,
    parse_k,
)


@pytest.mark.parametrize(
    ("value", "expected"), [("7", 7), (" -3 ", -3), (12, 12), (str((1 << 63) - 1), (1 << 63) - 1)]
)
def test_ids_parse_from_text_and_json_integers(value: Any, expected: int) -> None:
    assert parse_id("user", value) == expected


@pytest.mark.parametrize("value", ["", "x", "1.5", "9" * 5000, str(1 << 63), 1.5, True, None, []])
def test_bad_ids_name_the_parameter(value: Any) -> None:
    with pytest.raises(BadParam) as caught:
        parse_id("user", value)
    assert caught.value.param == "user"


@pytest.mark.parametrize("value", ["0", "-1", str(K_MAX + 1), "9" * 5000, "ten", ""])
def test_bad_k_is_refused(value: str) -> None:
    with pytest.raises(BadParam) as caught:
        parse_k(value)
    assert caught.value.param == "k"


def test_good_values() -> None:
    assert parse_k("1") == 1 and parse_k(str(K_MAX)) == K_MAX
    assert parse_consistency("validated") == "validated"
    assert parse_items([1, "2"]) == [1, 2]
    assert parse_json_object(b'{"a": 1}') == {"a": 1}


@given(st.text(max_size=50))
def test_any_text_is_parsed_or_refused_with_bad_param(text: str) -> None:
    for parse in (lambda t: parse_id("user", t), parse_k, parse_consistency):
        with contextlib.suppress(BadParam):
            parse(text)


@given(st.binary(max_size=200))
def test_any_body_is_parsed_or_refused_with_bad_param(body: bytes) -> None:
    params = []
    try:
        parse_json_object(body)
    except BadParam as exc:
        params.append(exc.param)
    assert params in ([], ["body"])


def test_the_serving_package_never_imports_torch() -> None:
    """Nodes serve with numpy only: importing every module of p2prec.serve (in a fresh
    interpreter) loads no torch."""
    code = (
        "import importlib, pkgutil, sys, p2prec.serve as s\n"
        "for m in pkgutil.walk_packages(s.__path__, 'p2prec.serve.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("http.port", 70000),
        ("http.host", ""),
        ("http.ready_lag_ms_max", -1),
        ("http.enabled", "yes"),
        ("http.admin_token", 5),
        ("http.nope", 1),
    ],
)
def test_http_config_errors_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"^{key}"):
        load_config("local", {key: value})


def test_http_config_defaults_and_an_empty_token() -> None:
    http = load_config("local").http
    assert (http.enabled, http.host, http.port, http.admin_token) == (True, "127.0.0.1", 0, "")
    assert http.ready_lag_ms_max == 5000
    assert load_config("local", {"http.admin_token": "t"}).http.admin_token == "t"
