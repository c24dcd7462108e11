"""The state of every member of a local mesh, for ``p2prec status``, the live view and chaos.

Vector, root and epoch come from each member's ``status.json`` (rewritten 0.2 s after a
change, at least every 1 s).
Readiness comes from ``GET /readyz`` when the member has an HTTP API, else from the status file:
alive, fresh, holding a model and not too far behind the trainer. Lag in milliseconds is the
member's own figure (``/v1/status``) when it has one, else an estimate: deltas behind the
trainer times the trainer's publication interval.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from p2prec.core.versions import Version
from p2prec.localmesh.runfile import pid_alive

STATUS_STALE_S = 2.0  # a status.json older than this comes from a stopped or paused process
READY_LAG_MS_MAX = 5_000.0  # fallback readiness bound when the member has no /readyz
HTTP_TIMEOUT_S = 0.5


def read_member_status(member: dict[str, Any]) -> dict[str, Any] | None:
    """The member's status.json if its current process wrote it recently, else None."""
    path = Path(member["data_dir"]) / "status.json"
    try:
        age_s = time.time() - path.stat().st_mtime
        status = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(status, dict) or status.get("pid") != member.get("pid"):
        return None
    return status if age_s <= STATUS_STALE_S else None


def http_get(url: str) -> tuple[int, dict[str, Any] | None]:
    """``(status code, JSON body or None)``; code 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as answer:
            return answer.status, _json_or_none(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json_or_none(exc.read())
    except (OSError, ValueError):
        return 0, None


def _json_or_none(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def deltas_behind(vector: list[int], head: list[int]) -> int:
    """Most versions any shard lags ``head`` (a shard on an older epoch counts the head's seq)."""
    if len(vector) != len(head):
        return max((Version.unpack(h).seq for h in head), default=0)
    behind = 0
    for mine, theirs in zip(vector, head, strict=True):
        if theirs > mine:
            own, top = Version.unpack(mine), Version.unpack(theirs)
            behind = max(behind, top.seq - own.seq if own.epoch == top.epoch else top.seq)
    return behind


def member_health(
    member: dict[str, Any], trainer: dict[str, Any] | None, interval_ms: float
) -> dict[str, Any]:
    """One entry of ``status --json``'s ``nodes`` list."""
    status = read_member_status(member)
    url = (status or {}).get("url") or member.get("url")
    entry: dict[str, Any] = {
        "id": member["id"],
        "dc": member["dc"],
        "role": member["role"],
        "url": url,
        "pid": member.get("pid"),
        "alive": pid_alive(member.get("pid")),
        "restarts": member.get("restarts", 0),
        "epoch": None if status is None else status["epoch"],
        "merkle_root": None if status is None else status["merkle_root"],
        "summary": None if status is None else status["summary"],
        "lag_versions": None,
        "lag_ms": None,
    }
    if status is not None and trainer is not None:
        entry["lag_versions"] = deltas_behind(status["vector"], trainer["vector"])
        entry["lag_ms"] = round(entry["lag_versions"] * interval_ms, 1)
    entry["ready"], entry["reason"] = _readiness(entry, status, url)
    return entry


def _readiness(
    entry: dict[str, Any], status: dict[str, Any] | None, url: str | None
) -> tuple[bool, str]:
    if not entry["alive"]:
        return False, "not running"
    if url:
        code, body = http_get(f"{url}/readyz")
        if code:
            _, info = http_get(f"{url}/v1/status")
            if info is not None and isinstance(info.get("lag_ms"), int | float):
                entry["lag_ms"] = info["lag_ms"]
            return code == 200, "" if code == 200 else str((body or {}).get("reason", code))
    return _status_readiness(entry, status)


def _status_readiness(entry: dict[str, Any], status: dict[str, Any] | None) -> tuple[bool, str]:
    if status is None:
        return False, "no fresh status (starting or paused)"
    if entry["role"] == "trainer":
        return True, ""
    if not any(status["vector"]):
        return False, "no model yet"
    if entry["lag_ms"] is None:
        return False, "trainer unknown"
    if entry["lag_ms"] > READY_LAG_MS_MAX:
        return False, f"lag {entry['lag_ms']:.0f} ms"
    return True, ""


def mesh_health(mesh: dict[str, Any]) -> dict[str, Any]:
    """The whole ``status --json`` object: ``nodes``, ``ready``, ``converged``."""
    members = mesh["members"]
    trainer_member = next((m for m in members if m["role"] == "trainer"), None)
    trainer = read_member_status(trainer_member) if trainer_member else None
    interval_ms = float(mesh.get("publish_interval_ms", 50.0))
    nodes = [member_health(m, trainer, interval_ms) for m in members]
    statuses = [read_member_status(m) for m in members if m["role"] == "node"]
    return {
        "run_dir": mesh.get("run_dir"),
        "supervisor_pid": mesh.get("supervisor_pid"),
        "supervisor_alive": pid_alive(mesh.get("supervisor_pid")),
        "nodes": nodes,
        "ready": all(n["ready"] for n in nodes),
        "converged": _converged(trainer, statuses),
        "trainer_root": None if trainer is None else trainer["merkle_root"],
        # when the trainer took the status compared (a paused trainer's must be newer)
        "trainer_written_s": None if trainer is None else trainer.get("written_s"),
    }


def _converged(trainer: dict[str, Any] | None, statuses: list[dict[str, Any] | None]) -> bool:
    """Every node holds the trainer's vector and root (and the trainer holds something)."""
    if trainer is None or not any(trainer["vector"]) or not statuses:
        return False
    return all(
        s is not None
        and s["vector"] == trainer["vector"]
        and s["merkle_root"] == trainer["merkle_root"]
        for s in statuses
    )
