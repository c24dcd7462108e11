"""docker-compose.yml is valid YAML in the expected shape and points at files that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from p2prec.cli import main

ROOT = Path(__file__).resolve().parent.parent


def load_compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_defines_the_datacenter_networks() -> None:
    compose = load_compose()
    assert set(compose["networks"]) >= {"dc1", "dc2", "dc3", "wan"}
    for service in compose["services"].values():
        assert set(service.get("networks", [])) <= set(compose["networks"])


def test_config_check_service_checks_a_shipped_config(monkeypatch: pytest.MonkeyPatch) -> None:
    service = load_compose()["services"]["config-check"]
    assert service["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    command = service["command"]
    assert command[:2] == ["config", "check"]
    monkeypatch.chdir(ROOT)  # the image's working directory holds conf/ like the repo root
    assert main(command) == 0
