"""Command lines and state files of mesh members running as processes on one machine.

Shared by the process tests and benchmarks (and, later, the local launcher): where a member's
keys and state live under one root directory, the ``p2prec node`` command that runs it, and
how to read the ``status.json`` it keeps up to date.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson


def key_settings(root: Path) -> list[str]:
    """``--set`` options placing the trainer's key pair and the CURVE keys under ``root``."""
    return [
        "--set",
        f"keys.curve_dir={root / 'curve'}",
        "--set",
        f"keys.trainer_public_key={root / 'trainer.pub'}",
        "--set",
        f"keys.trainer_signing_key={root / 'trainer.key'}",
    ]


def data_dir(root: Path, node_id: str) -> Path:
    return root / "state" / node_id


def node_command(
    root: Path,
    node_id: str,
    dc: str,
    *,
    port: int = 0,
    seeds: Sequence[str] = (),
    role: str = "node",
    preset: str = "local",
    settings: Sequence[str] = (),
) -> list[str]:
    """The ``p2prec node`` command of one member; ``settings`` are more ``--set`` options."""
    return [
        sys.executable,
        "-m",
        "p2prec.cli",
        "node",
        "--config",
        preset,
        *key_settings(root),
        "--set",
        f"node.id={node_id}",
        "--set",
        f"node.dc={dc}",
        "--set",
        f"node.role={role}",
        "--set",
        f"node.data_dir={data_dir(root, node_id)}",
        "--set",
        f"mesh.port={port}",
        "--set",
        f"mesh.seeds={orjson.dumps(list(seeds)).decode()}",
        "--set",  # members of this machine take turns to checkpoint
        f"mesh.checkpoint_turns_dir={root / 'checkpoint-turns'}",
        *settings,
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (a short race remains until the member binds it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now: every socket stays bound until all are
    chosen (separate ``free_port`` calls hand the same port out again: 10 repeats in 500)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def read_status(root: Path, node_id: str) -> dict[str, Any] | None:
    """The member's ``status.json``, or None while it has written none (or mid-replace)."""
    try:
        data = orjson.loads((data_dir(root, node_id) / "status.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
