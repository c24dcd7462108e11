"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The YAML is parsed; services, networks, volumes and healthchecks are checked against the shape
the chaos scripts rely on (container names, the WAN network and subnet); every service's
command is parsed by the real `p2prec` argument parser and its settings loaded with the real
config loader. `docker compose config -q` runs only where the client has the compose plugin.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from p2prec.chaos.compose import (
    CONTAINER_PREFIX,
    STATE_DIR,
    WAN_NETWORK,
    WAN_SUBNET,
    default_members,
)
from p2prec.cli import _parse_sets, build_parser, main
from p2prec.config import load_config
from p2prec.io.curve import generate_node_keys
from p2prec.io.transport import Envelope, Transport

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = {m.id: m for m in default_members()}
TOKEN = "test-token"
INTERPOLATION = re.compile(r"\$\{P2PREC_ADMIN_TOKEN:-[^}]*\}")


def load_compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def mesh_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load_compose()["services"]
    return {name: s for name, s in services.items() if name in MEMBERS}


def interpolated(command: list[str]) -> list[str]:
    """The command as compose runs it with P2PREC_ADMIN_TOKEN set."""
    return [INTERPOLATION.sub(TOKEN, part) for part in command]


def compose_config() -> str:
    service = mesh_services()["trainer"]
    command = service["command"]
    return str(command[command.index("--config") + 1])


def test_compose_defines_the_datacenter_networks() -> None:
    compose = load_compose()
    assert set(compose["networks"]) >= {"dc1", "dc2", "dc3", "wan"}
    for service in compose["services"].values():
        assert set(service.get("networks", [])) <= set(compose["networks"])


def test_every_member_is_a_service_with_the_names_chaos_uses() -> None:
    services = mesh_services()
    assert set(services) == set(MEMBERS)  # the trainer and 3 datacenters x 3 nodes
    for name, service in services.items():
        assert service["container_name"] == f"{CONTAINER_PREFIX}{name}"
        assert service["hostname"] == name
        assert "NET_ADMIN" in service["cap_add"]  # tc for WAN delay and bandwidth


def test_nodes_join_their_datacenter_and_the_wan_the_trainer_only_the_wan() -> None:
    compose = load_compose()
    wan = compose["networks"]["wan"]
    assert wan["name"] == WAN_NETWORK
    assert wan["ipam"]["config"][0]["subnet"] == WAN_SUBNET
    for name, service in mesh_services().items():
        member = MEMBERS[name]
        expected = ["wan"] if member.role == "trainer" else [member.dc, "wan"]
        assert service["networks"] == expected, name
    for dc in ("dc1", "dc2", "dc3"):
        assert compose["networks"][dc]["internal"] is True


def test_healthchecks_ask_readyz_on_the_configured_http_port() -> None:
    port = load_config(str(ROOT / compose_config())).to_dict()["http"]["port"]
    for name, service in mesh_services().items():
        test = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in test, name
        assert service["ports"][0].endswith(f":{port}") and service["ports"][0].startswith("127.")


def test_volumes_hold_keys_and_state_at_the_configured_paths() -> None:
    compose = load_compose()
    config = load_config(str(ROOT / compose_config()))
    assert config.node.data_dir == STATE_DIR
    keys_dir = str(Path(config.keys.curve_dir).parent)
    for name, service in mesh_services().items():
        volumes = service["volumes"]
        assert f"keys:{keys_dir}:ro" in volumes, name
        assert f"state-{name}:{STATE_DIR}" in volumes, name
        assert f"state-{name}" in compose["volumes"]
    assert f"keys:{keys_dir}" in compose["services"]["keygen"]["volumes"]


def test_every_member_mounts_one_checkpoint_turns_volume_at_the_configured_dir() -> None:
    """Members on one Docker host share its cores and disk: they take turns to checkpoint
    (flocks in ``mesh.checkpoint_turns_dir``, one volume for all of them)."""
    compose = load_compose()
    turns_dir = load_config(str(ROOT / compose_config())).mesh.checkpoint_turns_dir
    assert turns_dir and "checkpoint-turns" in compose["volumes"]
    for name, service in mesh_services().items():
        assert f"checkpoint-turns:{turns_dir}" in service["volumes"], name


def test_keygen_makes_every_members_keys_once() -> None:
    compose = load_compose()
    script = compose["services"]["keygen"]["command"][0]
    assert "test -f /keys/trainer.key || p2prec keygen --config conf/compose.toml" in script
    ids = re.search(r"for id in ([^;]+); do", script)
    assert ids is not None and set(ids.group(1).split()) == set(MEMBERS)
    for service in mesh_services().values():
        assert service["depends_on"]["keygen"]["condition"] == "service_completed_successfully"


def _settings(command: list[str]) -> dict[str, Any]:
    args = build_parser().parse_args(interpolated(command))  # real subcommands and options
    overrides: dict[str, Any] = _parse_sets(args.set)
    return overrides


def test_commands_parse_and_their_settings_are_real_config_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)  # the image's working directory holds conf/ like the repo root
    for name, service in mesh_services().items():
        command = service["command"]
        assert command[0] == ("trainer" if MEMBERS[name].role == "trainer" else "node")
        overrides = _settings(command)
        assert overrides["node.id"] == name and overrides["node.dc"] == MEMBERS[name].dc
        assert overrides["http.admin_token"] == TOKEN
        assert overrides["mesh.advertise_host"] == name
        config = load_config(command[command.index("--config") + 1], overrides)
        assert config.node.id == name


def test_a_member_advertises_its_service_name(tmp_path: Path) -> None:
    """Containers bind 0.0.0.0 on two networks; peers must reach them by service name."""
    generate_node_keys(tmp_path, "dc1-n1")
    settings = {"node.id": "dc1-n1", "keys.curve_dir": str(tmp_path)}
    wildcard = load_config("local", {**settings, "mesh.bind_host": "0.0.0.0"})
    with pytest.raises(ValueError, match="advertise_host"):
        Transport.from_config(wildcard, _ignore)
    named = load_config("local", {**settings, "mesh.advertise_host": "dc1-n1"})

    async def bound_address() -> str:
        transport = Transport.from_config(named, _ignore)
        try:
            return await transport.start()  # binds 127.0.0.1 (the preset), advertises the name
        finally:
            await transport.close()

    assert asyncio.run(bound_address()).startswith("dc1-n1:")


def _ignore(_envelope: Envelope, _frames: list[Any]) -> None:
    return None


def test_config_check_service_checks_a_shipped_config(monkeypatch: pytest.MonkeyPatch) -> None:
    service = load_compose()["services"]["config-check"]
    assert service["build"]["context"] == "."
    assert (ROOT / "Dockerfile").is_file()
    command = service["command"]
    assert command[:2] == ["config", "check"]
    monkeypatch.chdir(ROOT)
    assert main(command) == 0


def test_dockerfile_builds_a_node_image_without_torch_and_a_cpu_torch_trainer() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = {name: base for base, name in re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.M)}
    assert stages["trainer"] == "base" and stages["node"] == "base"
    trainer_stage = dockerfile.split("AS trainer")[1].split("FROM")[0]
    assert "download.pytorch.org/whl/cpu" in trainer_stage
    assert "torch" not in dockerfile.split("AS base")[1].split("FROM")[0].replace("# ", "")
    targets = {n: s["build"]["target"] for n, s in mesh_services().items()}
    assert targets.pop("trainer") == "trainer" and set(targets.values()) == {"node"}


def test_dockerfile_compiles_the_kernels_in_a_stage_of_its_own() -> None:
    """The wheel stage has gcc and checks the wheel holds the compiled kernels; the images
    install that wheel and carry no compiler."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", dockerfile, re.M | re.S))
    assert "gcc" in stages["wheel"] and "setup.py" in stages["wheel"]
    assert "_kernels" in stages["wheel"]
    assert "COPY --from=wheel /wheels" in stages["base"]
    assert "gcc" not in stages["base"] and "COPY p2prec" not in stages["base"]


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


def test_docker_compose_config_parses_the_file() -> None:
    if not _compose_plugin():
        pytest.skip("the docker client here has no compose plugin (`docker compose version`)")
    done = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
