"""The run directory's ``mesh.json`` and the pid checks every tool shares.

``mesh.json`` is the one place that says which processes belong to the mesh: the supervisor's
pid and, per member, its id, datacenter, role, current pid, URL, data directory and command.
It is replaced atomically whenever a pid changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

MESH_FILE = "mesh.json"
DEFAULT_RUN_DIR = ".p2prec"


class RunDirError(Exception):
    """No mesh here, or an unreadable ``mesh.json``: one line for the user."""


def mesh_path(run_dir: Path) -> Path:
    return run_dir / MESH_FILE


def write_mesh(run_dir: Path, mesh: dict[str, Any]) -> None:
    path = mesh_path(run_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(mesh, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def read_mesh(run_dir: Path) -> dict[str, Any]:
    path = mesh_path(run_dir)
    try:
        mesh = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise RunDirError(f"{path}: no local mesh here (start one with `p2prec up`)") from None
    except orjson.JSONDecodeError as exc:
        raise RunDirError(f"{path}: unreadable ({exc})") from None
    if not isinstance(mesh, dict) or not isinstance(mesh.get("members"), list):
        raise RunDirError(f"{path}: not a mesh file (no members list)")
    return mesh


def pid_alive(pid: int | None) -> bool:
    """True while ``pid`` exists and is not a zombie (a stopped process is alive)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) != "Z"


def _proc_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0] if ")" in stat else ""


def is_p2prec_process(pid: int | None) -> bool:
    """Alive and running p2prec: guards signals against a pid the system has reused."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid
    return b"p2prec" in cmdline


def member_pids(mesh: dict[str, Any]) -> list[int]:
    return [int(m["pid"]) for m in mesh["members"] if m.get("pid")]


def mesh_pids(mesh: dict[str, Any]) -> set[int]:
    """Every pid ``mesh.json`` names: the members' and the supervisor's."""
    pids = set(member_pids(mesh))
    if mesh.get("supervisor_pid"):
        pids.add(int(mesh["supervisor_pid"]))
    return pids


def find_member(mesh: dict[str, Any], member_id: str) -> dict[str, Any]:
    for member in mesh["members"]:
        if member["id"] == member_id:
            found: dict[str, Any] = member
            return found
    known = ", ".join(m["id"] for m in mesh["members"])
    raise RunDirError(f"{member_id!r}: no such member (known: {known})")
