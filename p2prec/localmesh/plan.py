"""What the local mesh runs: member ids, datacenters, ports and command lines.

Ports are chosen once, when the plan is made, so a restarted member comes back at the same
address (its peers and the seeds keep working).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import secrets
from pathlib import Path
from typing import Any, Literal

from p2prec.config import load_config
from p2prec.io.localmesh import data_dir, free_ports, node_command

TrainerKind = Literal["torch", "synthetic"]
TRAINER_ID = "trainer"
TRAINER_DC = "dc0"  # the trainer's own site: partitioning dc1 cuts dc1 off, not the trainer
HOST = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    """The knobs of ``p2prec up`` that shape the mesh."""

    run_dir: Path
    config: str = "local"  # a file or preset every member starts from
    dcs: int = 3
    nodes_per_dc: int = 3
    trainer: TrainerKind = "torch"
    synthetic_rate: float = 10.0  # steps per second of the synthetic stream
    synthetic_steps: int = 0  # 0: publish until stopped
    settings: tuple[str, ...] = ()  # KEY=VALUE for every member


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """One member of the plan: how to start it and where to find it."""

    id: str
    dc: str
    role: str  # "trainer" or "node"
    mesh_port: int
    http_port: int  # 0 when this build has no HTTP API
    data_dir: str
    command: list[str]

    @property
    def url(self) -> str | None:
        return f"http://{HOST}:{self.http_port}" if self.http_port else None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "url": self.url}


def node_ids(dcs: int, nodes_per_dc: int) -> list[tuple[str, str]]:
    """``(id, dc)`` of every inference node: dc1-n1 ... dcN-nM."""
    return [
        (f"dc{d}-n{n}", f"dc{d}") for d in range(1, dcs + 1) for n in range(1, nodes_per_dc + 1)
    ]


def http_available() -> bool:
    """Whether this build's config has an ``[http]`` section (the HTTP API)."""
    return "http" in load_config("local").to_dict()


def torch_trainer_available() -> bool:
    from p2prec.cli import build_parser

    has_command = "trainer" in build_parser().format_help()
    return has_command and importlib.util.find_spec("torch") is not None


def publish_interval_ms(options: PlanOptions) -> float:
    """Time between two publications of the trainer: turns versions behind into ms of lag."""
    if options.trainer == "synthetic":
        return 1000.0 / max(options.synthetic_rate, 1e-3)
    overrides = _settings_dict(options.settings)
    config = load_config(options.config, overrides)
    return max(config.trainer.publish_interval_s * 1000.0, 1.0)


def _settings_dict(settings: tuple[str, ...]) -> dict[str, Any]:
    from p2prec.cli import _parse_sets

    return _parse_sets(list(settings))


def build_plan(options: PlanOptions, admin_token: str) -> list[MemberSpec]:
    """The trainer first, then the nodes; every member seeds from the trainer and one node of
    each datacenter (any of them lets a restarted member rejoin)."""
    http = http_available()
    ids = [(TRAINER_ID, TRAINER_DC), *node_ids(options.dcs, options.nodes_per_dc)]
    # Mesh and HTTP ports in one allocation: separately chosen ports can repeat.
    members = [member_id for member_id, _ in ids]
    chosen = free_ports(2 * len(ids) if http else len(ids), HOST)
    ports = dict(zip(members, chosen, strict=False))
    http_ports = dict(zip(members, chosen[len(ids) :] if http else [0] * len(ids), strict=True))
    first_of_dc = {dc: member_id for member_id, dc in reversed(ids)}
    seed_ids = [TRAINER_ID, *(m for dc, m in sorted(first_of_dc.items()) if dc != TRAINER_DC)]
    seeds = [f"{s}@{HOST}:{ports[s]}" for s in seed_ids]
    plan = []
    for member_id, dc in ids:
        http_port = http_ports[member_id]
        own_seeds = [s for s in seeds if not s.startswith(f"{member_id}@")]
        command = _member_command(options, member_id, dc, ports[member_id], own_seeds)
        command += _http_settings(http_port, admin_token) if http else []
        role = "trainer" if member_id == TRAINER_ID else "node"
        directory = str(data_dir(options.run_dir, member_id))
        plan.append(
            MemberSpec(member_id, dc, role, ports[member_id], http_port, directory, command)
        )
    return plan


def _member_command(
    options: PlanOptions, member_id: str, dc: str, port: int, seeds: list[str]
) -> list[str]:
    settings = [item for pair in options.settings for item in ("--set", pair)]
    settings += ["--set", "log.format=json"]
    is_trainer = member_id == TRAINER_ID
    command = node_command(
        options.run_dir.resolve(),
        member_id,
        dc,
        port=port,
        seeds=seeds,
        role="trainer" if is_trainer else "node",
        preset=options.config,
        settings=settings,
    )
    if is_trainer and options.trainer == "torch":
        command[3] = "trainer"  # same options; `p2prec trainer` runs the torch trainer
    elif is_trainer:
        command += ["--synthetic-rate", str(options.synthetic_rate)]
        command += ["--synthetic-steps", str(options.synthetic_steps)]
        # The nodes start after the trainer: the stream waits (bounded) until they joined it,
        # else its first deltas reach them only by catch-up, seconds later.
        command += ["--synthetic-wait-members", str(options.dcs * options.nodes_per_dc)]
    return command


def _http_settings(http_port: int, admin_token: str) -> list[str]:
    return [
        "--set",
        f"http.host={HOST}",
        "--set",
        f"http.port={http_port}",
        "--set",
        f"http.admin_token={admin_token}",
    ]


def new_admin_token() -> str:
    return secrets.token_urlsafe(24)
