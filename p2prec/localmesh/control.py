"""``p2prec up`` / ``down``: prepare a run directory, supervise it (here or detached), stop it.

``up`` writes the keys (if missing) and ``plan.json`` (the members and their commands), then
either supervises in this process with a live view, or starts a detached supervisor
(``p2prec up --supervise``, in a new session) and returns once the mesh is ready. ``down`` sends
SIGTERM to the supervisor, which stops its members; after a bounded wait it sends SIGKILL to
exactly the pids named in ``mesh.json`` that still run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from p2prec.localmesh.health import mesh_health
from p2prec.localmesh.plan import (
    MemberSpec,
    PlanOptions,
    build_plan,
    new_admin_token,
    publish_interval_ms,
)
from p2prec.localmesh.runfile import (
    RunDirError,
    is_p2prec_process,
    member_pids,
    mesh_path,
    pid_alive,
    read_mesh,
)
from p2prec.localmesh.supervisor import Supervisor
from p2prec.localmesh.view import PROGRESS_PRINT_S, progress_line, status_lines

PLAN_FILE = "plan.json"
TICK_S = 0.1  # how often the supervisor looks for exited members
VIEW_INTERVAL_S = 0.5  # live view refresh (at most twice a second)
DOWN_SUPERVISOR_WAIT_S = 20.0  # the supervisor's own stop waits up to 10 s per member set
DOWN_KILL_WAIT_S = 5.0


# --- preparing ---------------------------------------------------------------------------------


def ensure_keys(run_dir: Path, member_ids: list[str]) -> list[str]:
    """The trainer's Ed25519 pair and a CURVE pair per member, written only where missing."""
    from p2prec.io.curve import generate_node_keys, public_key_file
    from p2prec.wire import signing

    made = []
    private, public = run_dir / "trainer.key", run_dir / "trainer.pub"
    if not private.exists() or not public.exists():
        signer = signing.Signer.generate()
        signer.save(private)
        signing.save_public_key(public, signer.public_key_bytes)
        made.append("trainer signing key")
    for member_id in member_ids:
        if not public_key_file(run_dir / "curve", member_id).exists():
            generate_node_keys(run_dir / "curve", member_id, force=True)
            made.append(member_id)
    return made


def refuse_if_running(run_dir: Path) -> None:
    if not mesh_path(run_dir).exists():
        return
    try:
        mesh = read_mesh(run_dir)
    except RunDirError:
        return
    pid = mesh.get("supervisor_pid")
    orphans = [p for p in member_pids(mesh) if is_p2prec_process(p)]
    if orphans and not is_p2prec_process(pid):
        raise RunDirError(
            f"{run_dir}: members of an earlier mesh still run (pids {orphans}); `p2prec down` first"
        )
    if is_p2prec_process(pid):
        raise RunDirError(
            f"{run_dir}: a mesh is already running (supervisor pid {pid}); `p2prec down` first"
        )


def prepare(options: PlanOptions) -> dict[str, Any]:
    """Keys and plan.json in the run directory; returns the plan."""
    run_dir = options.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    refuse_if_running(run_dir)
    token = new_admin_token()
    specs = build_plan(options, token)
    made = ensure_keys(run_dir, [s.id for s in specs])
    if made:
        print(f"keys written in {run_dir}: {', '.join(made[:3])}{' ...' if len(made) > 3 else ''}")
    plan = {
        "run_dir": str(run_dir),
        "admin_token": token,
        "trainer": options.trainer,
        "publish_interval_ms": publish_interval_ms(options),
        "created_unix_s": time.time(),
        "members": [s.to_json() for s in specs],
    }
    path = run_dir / PLAN_FILE
    path.write_bytes(orjson.dumps(plan, option=orjson.OPT_INDENT_2))
    path.chmod(0o600)  # holds the admin token
    return plan


def _specs(plan: dict[str, Any]) -> list[MemberSpec]:
    fields = ("id", "dc", "role", "mesh_port", "http_port", "data_dir", "command")
    return [MemberSpec(**{k: m[k] for k in fields}) for m in plan["members"]]


# --- supervising -------------------------------------------------------------------------------


class _StopFlag:
    def __init__(self) -> None:
        self.set = False

    def handler(self, _sig: int, _frame: object) -> None:
        self.set = True


def supervise(
    run_dir: Path, restart_delay_s: float, show: Callable[[dict[str, Any]], None] | None
) -> None:
    """Run the mesh of ``plan.json`` until SIGINT or SIGTERM; ``show`` (if any) gets the
    health a few times per second."""
    plan = orjson.loads((run_dir / PLAN_FILE).read_bytes())
    meta = {k: v for k, v in plan.items() if k != "members"}
    supervisor = Supervisor(run_dir, _specs(plan), meta, restart_delay_s)
    stop = _StopFlag()
    previous = {s: signal.signal(s, stop.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start_all(time.monotonic())
        next_view = 0.0
        while not stop.set:
            now = time.monotonic()
            supervisor.tick(now)
            if show is not None and now >= next_view:
                show(mesh_health(read_mesh(run_dir)))
                next_view = now + VIEW_INTERVAL_S
            time.sleep(TICK_S)
    finally:
        supervisor.stop_all()
        supervisor.meta["stopped_unix_s"] = time.time()
        for member in supervisor.members:
            member.proc = None
        supervisor.write_mesh()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- detached start ----------------------------------------------------------------------------


def start_detached(run_dir: Path, restart_delay_s: float) -> int:
    """Start ``p2prec up --supervise`` in a new session; returns its pid."""
    command = [sys.executable, "-m", "p2prec.cli", "up", "--supervise"]
    command += ["--run-dir", str(run_dir), "--restart-delay-s", str(restart_delay_s)]
    with (run_dir / "supervisor.log").open("ab") as out:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    return proc.pid


def wait_ready(run_dir: Path, supervisor_pid: int, deadline_s: float) -> dict[str, Any] | None:
    """Poll until every member is ready (the health), the supervisor died or the deadline."""
    started = time.monotonic()
    next_print = 0.0
    health: dict[str, Any] | None = None
    while time.monotonic() - started < deadline_s:
        if not pid_alive(supervisor_pid):
            print(f"the supervisor (pid {supervisor_pid}) exited: see {run_dir}/supervisor.log")
            return None
        health = _current_health(run_dir, supervisor_pid)
        elapsed_s = time.monotonic() - started
        if health is not None and health["ready"]:
            print(f"mesh ready after {elapsed_s:.1f} s")
            return health
        if health is not None and elapsed_s >= next_print:
            print(progress_line(health, elapsed_s), flush=True)
            next_print = elapsed_s + PROGRESS_PRINT_S
        time.sleep(VIEW_INTERVAL_S)
    print(f"not ready after {deadline_s:.0f} s; still running (`p2prec status`, `p2prec down`)")
    return None


def _current_health(run_dir: Path, supervisor_pid: int) -> dict[str, Any] | None:
    try:
        mesh = read_mesh(run_dir)
    except RunDirError:
        return None
    return mesh_health(mesh) if mesh.get("supervisor_pid") == supervisor_pid else None


# --- stopping ----------------------------------------------------------------------------------


def stop_mesh(run_dir: Path) -> list[int]:
    """SIGTERM to the supervisor, bounded wait, then SIGKILL to the listed pids still alive.
    Returns the pids that had to be killed."""
    mesh = read_mesh(run_dir)
    supervisor_pid = int(mesh.get("supervisor_pid") or 0)
    pids = {int(m["pid"]) for m in mesh["members"] if m.get("pid")}
    if is_p2prec_process(supervisor_pid):
        _send(supervisor_pid, signal.SIGTERM)
        _wait_gone([supervisor_pid], DOWN_SUPERVISOR_WAIT_S)
    leftovers = [p for p in [supervisor_pid, *pids] if p and is_p2prec_process(p)]
    for pid in leftovers:
        _send(pid, signal.SIGCONT)
        _send(pid, signal.SIGKILL)
    _wait_gone(leftovers, DOWN_KILL_WAIT_S)
    return leftovers


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def print_status(run_dir: Path, as_json: bool) -> dict[str, Any]:
    health = mesh_health(read_mesh(run_dir))
    if as_json:
        print(orjson.dumps(health, option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(status_lines(health)))
    return health
