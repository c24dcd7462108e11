"""Drive one reliability scenario on a real local mesh (``p2prec up --detach``): the faults of
a seeded schedule, heal, quiesce, wait for convergence, and the report.

Every fault goes through the local chaos backend (``p2prec.chaos.local``) and is written to the
schedule with its time since the start of the stream, so a failing report names what ran.
Every pid the mesh ever had is remembered, and ``down`` checks that none is left.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2prec.chaos.local import LocalBackend
from p2prec.localmesh.health import http_get
from p2prec.localmesh.runfile import mesh_pids, pid_alive, read_mesh
from p2prec.proof.checker import check_all, lost_updates
from p2prec.proof.observe import Observer, Sample
from p2prec.proof.record import Record, read_record
from p2prec.proof.report import ScenarioReport, crashes
from p2prec.trainer.journal import JOURNAL_FILE

POLL_S = 0.2
COMMAND_TIMEOUT_S = 120.0


class ScenarioError(AssertionError):
    """The scenario could not be carried out (a deadline passed); names what it waited for."""


class MeshScenario:
    """One mesh in ``run_dir`` for one scenario (see module docstring)."""

    def __init__(self, name: str, run_dir: Path, seed: int, settings: list[str]) -> None:
        self.name = name
        self.run_dir = run_dir
        self.seed = seed
        self.rng = random.Random(seed)
        self.settings = settings
        self.schedule: list[str] = []
        self.killed: Counter[str] = Counter()
        self.pids: set[int] = set()
        self.started_s = time.monotonic()
        self.observer = Observer(run_dir)
        self._backend: LocalBackend | None = None

    # -- life of the mesh ------------------------------------------------------------------

    def up(self, deadline_s: float) -> None:
        command = ["up", "--detach", "--run-dir", str(self.run_dir), "--trainer", "torch"]
        command += ["--restart-delay-s", "0.5", "--ready-deadline-s", str(deadline_s)]
        done = run_cli(*command, *self.settings, timeout_s=deadline_s + 60)
        self.refresh()
        if done.returncode != 0:
            raise ScenarioError(f"p2prec up failed: {done.stdout}{done.stderr}")
        self._backend = LocalBackend(self.run_dir)
        self.started_s = time.monotonic()
        self.observer.start()

    def refresh(self) -> dict[str, Any]:
        """mesh.json, remembering every pid it names."""
        mesh = read_mesh(self.run_dir)
        self.pids |= mesh_pids(mesh)
        return mesh

    def down(self) -> list[int]:
        """``p2prec down``, then SIGKILL any remembered pid still alive; returns those."""
        self.observer.stop()
        if (self.run_dir / "mesh.json").exists():
            self.refresh()
            run_cli("down", "--run-dir", str(self.run_dir), timeout_s=60)
        left = [pid for pid in self.pids if pid_alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return left

    # -- faults ----------------------------------------------------------------------------

    @property
    def backend(self) -> LocalBackend:
        assert self._backend is not None, "up() first"
        return self._backend

    def act(self, action: str, argument: str | None = None) -> None:
        """One chaos action, written to the schedule."""
        self.refresh()
        outcome = self.backend.apply(action, argument)
        at_s = time.monotonic() - self.started_s
        self.schedule.append(f"t={at_s:6.2f} s  {action} {argument or ''}".rstrip())
        if action == "kill-node" and argument is not None:
            self.killed[argument] += 1
        if outcome.failed:
            self.schedule.append(f"          ({len(outcome.failed)} calls failed)")

    def note(self, line: str) -> None:
        at_s = time.monotonic() - self.started_s
        self.schedule.append(f"t={at_s:6.2f} s  # {line}")

    def members(self, role: str = "node") -> list[dict[str, Any]]:
        return [m for m in self.refresh()["members"] if m["role"] == role]

    def trainer(self) -> dict[str, Any]:
        return self.members("trainer")[0]

    def node_status(self, member_id: str) -> dict[str, Any] | None:
        member = next(m for m in self.members() if m["id"] == member_id)
        code, body = http_get(f"{member['url']}/v1/status")
        return body if code == 200 else None

    def interior_relays(self) -> list[str]:
        """Nodes with children in some shard group's tree (from their own /v1/status)."""
        relays = []
        for member in self.members():
            status = self.node_status(member["id"])
            if status and any(place.get("children") for place in status.get("tree", [])):
                relays.append(member["id"])
        return sorted(relays)

    def seen_as(self, member_id: str, states: set[str], by: list[str]) -> bool:
        """True when one of ``by`` reports ``member_id`` in one of ``states``."""
        for observer in by:
            status = self.node_status(observer)
            for peer in (status or {}).get("peers", []):
                if peer["id"] == member_id and peer["state"] in states:
                    return True
        return False

    def wait(self, condition: Callable[[], bool], what: str, deadline_s: float) -> float:
        """Poll ``condition`` until true; returns the seconds it took, raises at the deadline."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > deadline_s:
                raise ScenarioError(f"{self.name}: no {what} within {deadline_s:.0f} s")
            time.sleep(POLL_S)  # polling a condition with a deadline
        return time.monotonic() - started

    # -- the record and the end ------------------------------------------------------------

    def journal(self) -> Path:
        return Path(self.trainer()["data_dir"]) / JOURNAL_FILE

    def record(self) -> Record:
        path = self.journal()
        return read_record(path) if path.exists() else Record()

    def quiesce_and_converge(self, deadline_s: float) -> tuple[float | None, dict[str, Sample]]:
        """Heal everything, pause the trainer, and poll rounds of samples until every node
        holds the trainer's vector and root. Returns (seconds from the heal, None at the
        deadline; the last round's samples)."""
        self.act("heal")
        healed_s = time.monotonic()
        self.note(self.backend.quiesce(True))
        paused_s = time.time()
        self.observer.stop()
        finals: dict[str, Sample] = {}
        while time.monotonic() - healed_s < deadline_s:
            finals = {s.member: s for s in self.observer.round()}
            if mesh_converged(finals, len(self.members()), paused_s):
                return time.monotonic() - healed_s, finals
            time.sleep(POLL_S)  # polling a condition with a deadline
        return None, finals

    def report(
        self, converge_s: float | None, finals: dict[str, Sample], bound_s: float
    ) -> ScenarioReport:
        record = self.record()
        mesh = self.refresh()
        restarts = {m["id"]: int(m.get("restarts", 0)) for m in mesh["members"]}
        alive = {m["id"]: pid_alive(m.get("pid")) for m in mesh["members"]}
        obs = self.observer
        return ScenarioReport(
            name=self.name,
            seed=self.seed,
            schedule=self.schedule,
            lost=lost_updates(record, finals),
            violations=check_all(record, obs.samples, obs.reads, finals, converge_s, bound_s),
            crashes=crashes(restarts, self.killed, alive),
            converge_s=converge_s,
            deltas=len(record.deltas),
            rollbacks=len(record.rollbacks),
            samples=len(obs.samples),
        )


def mesh_converged(finals: dict[str, Sample], nodes: int, paused_s: float) -> bool:
    """Every node holds the trainer's vector and root, as the trainer reported them after it
    was paused: an older status of the trainer (rewritten 0.2 s after a change) could show
    the state every node's equally old status shows, and what the trainer published after it
    would count as lost (seen: the rogue scenario, 2 steps)."""
    trainer = next((s for s in finals.values() if s.role == "trainer"), None)
    held = [s for s in finals.values() if s.role == "node"]
    if trainer is None or len(held) != nodes or trainer.written_s < paused_s:
        return False
    return all(s.vector == trainer.vector and s.root == trainer.root for s in held)


def run_cli(*args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``p2prec ARGS`` in a child process (this interpreter), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "p2prec.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
