"""The supervisor: starts every member, restarts one that died, stops them all by pid.

Like a container restart policy: a member that exits (crash, SIGKILL from a chaos script) is
started again with the same command after ``restart_delay_s``, from its data directory, until
the supervisor is told to stop. Members run in their own process groups, so a Ctrl-C in the
terminal reaches the supervisor only, which then stops its children one by one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from p2prec.localmesh.plan import MemberSpec
from p2prec.localmesh.runfile import write_mesh
from p2prec.log import get_logger

log = get_logger(__name__)

STOP_WAIT_S = 10.0  # SIGTERM, then SIGKILL of the members still alive after this
EARLY_EXIT_S = 10.0  # an exit this soon after the start counts as a crash loop: back off
RESTART_DELAY_MAX_S = 30.0


@dataclasses.dataclass
class Member:
    """A member's spec and the process currently running it."""

    spec: MemberSpec
    proc: subprocess.Popen[bytes] | None = None
    exited_at_s: float | None = None  # monotonic time of the exit seen, until the restart
    restarts: int = 0
    started_at_s: float = 0.0  # monotonic time of the last start
    delay_s: float = 0.0  # wait before the next restart (grows in a crash loop)
    log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Owns the member processes of one run directory."""

    def __init__(
        self, run_dir: Path, specs: list[MemberSpec], meta: dict[str, Any], restart_delay_s: float
    ) -> None:
        self.run_dir = run_dir
        self.members = [Member(spec) for spec in specs]
        self.meta = meta  # written into mesh.json next to the members
        self.restart_delay_s = restart_delay_s

    def start_all(self, now_s: float) -> None:
        for member in self.members:
            self._spawn(member)
            member.started_at_s = now_s
        self.write_mesh()

    def _spawn(self, member: Member) -> None:
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if member.log_file is not None:
            member.log_file.close()
        out = member.log_file = (logs / f"{member.spec.id}.log").open("ab")
        member.proc = subprocess.Popen(
            member.spec.command,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            cwd=self.run_dir,
            process_group=0,
        )
        member.exited_at_s = None
        log.info("member_started", member=member.spec.id, pid=member.proc.pid)

    def tick(self, now_s: float) -> None:
        """Notice exits and restart members whose delay has passed; call it a few times a
        second."""
        changed = False
        for member in self.members:
            if member.proc is None:
                continue
            code = member.proc.poll()
            if code is not None and member.exited_at_s is None:
                self._note_exit(member, code, now_s)
            if member.exited_at_s is not None and now_s - member.exited_at_s >= member.delay_s:
                member.restarts += 1
                self._spawn(member)
                member.started_at_s = now_s
                changed = True
        if changed:
            self.write_mesh()

    def _note_exit(self, member: Member, code: int, now_s: float) -> None:
        """A member that dies soon after its start waits twice as long before the next start
        (a crash loop backs off up to RESTART_DELAY_MAX_S); one that ran a while restarts after
        the configured delay."""
        member.exited_at_s = now_s
        crashed_early = now_s - member.started_at_s < EARLY_EXIT_S
        doubled = max(member.delay_s, self.restart_delay_s, 0.1) * 2
        member.delay_s = (
            min(doubled, RESTART_DELAY_MAX_S) if crashed_early else self.restart_delay_s
        )
        log.warning("member_exited", member=member.spec.id, code=code, restart_in_s=member.delay_s)

    def write_mesh(self) -> None:
        members = [{**m.spec.to_json(), "pid": m.pid, "restarts": m.restarts} for m in self.members]
        write_mesh(self.run_dir, {**self.meta, "supervisor_pid": os.getpid(), "members": members})

    def stop_all(self, wait_s: float = STOP_WAIT_S) -> None:
        """SIGTERM every member, wait (bounded), SIGKILL those left; reap them all."""
        running = [m.proc for m in self.members if m.proc is not None and m.proc.poll() is None]
        for proc in running:
            _signal(proc, signal.SIGCONT)  # a paused member must run to handle SIGTERM
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        for proc in running:
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("member_killed", pid=proc.pid, after_s=wait_s)
                _signal(proc, signal.SIGKILL)
                proc.wait(timeout=STOP_WAIT_S)
        for member in self.members:
            if member.log_file is not None:
                member.log_file.close()
        log.info("members_stopped", count=len(running))


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
