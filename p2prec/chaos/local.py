"""Chaos on the local mesh of ``p2prec up``: signals by pid, the admin API for link faults.

kill = SIGKILL (the supervisor restarts the member), pause = SIGSTOP, resume = SIGCONT.
Partitions, WAN delay, WAN throttling (each node's uplink to other datacenters shaped in its
transport: ``rate_kbit`` of ``/admin/link-fault``) and poisoning use the members' admin HTTP API
(bearer token from the run directory's plan); a build without the HTTP API cannot do them, and
says so.
"""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from p2prec.chaos.actions import ChaosError, Member, Outcome, positive_int, require_argument
from p2prec.localmesh.health import mesh_health
from p2prec.localmesh.runfile import find_member, is_p2prec_process, read_mesh

HTTP_TIMEOUT_S = 10.0  # pause publishes what is pending first: slow on a loaded host
HTTP_ACTIONS = ("partition-dc", "delay-wan", "throttle-wan", "poison-trainer")


class LocalBackend:
    name = "local"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.mesh = read_mesh(run_dir)
        self.token = str(self.mesh.get("admin_token", ""))

    def members(self) -> list[Member]:
        return [Member(m["id"], m["dc"], m["role"]) for m in self.mesh["members"]]

    def has_http(self) -> bool:
        return all(m.get("url") for m in self.mesh["members"])

    def supports(self, action: str) -> bool:
        return action not in HTTP_ACTIONS or self.has_http()

    def apply(self, action: str, argument: str | None) -> Outcome:
        if not self.supports(action):
            raise ChaosError(f"{action}: not available on the local backend ({self._why(action)})")
        self.mesh = read_mesh(self.run_dir)  # pids change when members restart
        handlers = {
            "kill-node": self._kill,
            "pause-node": self._pause,
            "resume-node": self._resume,
            "partition-dc": self._partition,
            "heal": self._heal,
            "delay-wan": self._delay,
            "throttle-wan": self._throttle,
            "poison-trainer": self._poison,
        }
        return handlers[action](argument)

    def _why(self, _action: str) -> str:
        return "it needs the members' HTTP admin API, which this build lacks"

    # -- signals ----------------------------------------------------------------------------

    def _signal_member(self, member_id: str, sig: signal.Signals) -> int:
        member = find_member(self.mesh, member_id)
        pid = member.get("pid")
        if not is_p2prec_process(pid):
            raise ChaosError(f"{member_id}: not running (pid {pid})")
        assert pid is not None
        os.kill(int(pid), sig)
        return int(pid)

    def _kill(self, argument: str | None) -> Outcome:
        member_id = require_argument("kill-node", argument)
        pid = self._signal_member(member_id, signal.SIGKILL)
        undo = "nothing to do: the supervisor of `p2prec up` restarts it from its disk state"
        return Outcome("kill-node", [f"SIGKILL to {member_id} (pid {pid})"], undo)

    def _pause(self, argument: str | None) -> Outcome:
        member_id = require_argument("pause-node", argument)
        pid = self._signal_member(member_id, signal.SIGSTOP)
        undo = f"p2prec chaos resume-node {member_id}"
        return Outcome("pause-node", [f"SIGSTOP to {member_id} (pid {pid})"], undo)

    def _resume(self, argument: str | None) -> Outcome:
        member_id = require_argument("resume-node", argument)
        pid = self._signal_member(member_id, signal.SIGCONT)
        return Outcome("resume-node", [f"SIGCONT to {member_id} (pid {pid})"], "")

    # -- admin API --------------------------------------------------------------------------

    def _admin(self, member: dict[str, Any], method: str, path: str, body: Any = None) -> str:
        """One admin call; returns a line saying what happened (the error, if any)."""
        url = f"{member['url']}{path}"
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:
                return f"{method} {url} {body or ''} -> {answer.status}"
        except urllib.error.HTTPError as exc:
            raise ChaosError(f"{method} {url}: HTTP {exc.code}") from None
        except OSError as exc:
            raise ChaosError(f"{method} {url}: {exc}") from None

    def _each_member(
        self, calls: list[tuple[dict[str, Any], str, str, Any]]
    ) -> tuple[list[str], list[str]]:
        done, failed = [], []
        for member, method, path, body in calls:
            try:
                done.append(self._admin(member, method, path, body))
            except ChaosError as exc:
                failed.append(str(exc))  # a paused or restarting member: report, go on
        return done, failed

    def _partition(self, argument: str | None) -> Outcome:
        dc = require_argument("partition-dc", argument)
        dcs = {m["dc"] for m in self.mesh["members"]}
        if dc not in dcs:
            raise ChaosError(f"partition-dc: unknown datacenter {dc!r} (known: {sorted(dcs)})")
        calls = []
        for member in self._nodes():  # a node's drop works both ways, so trainer links too
            targets = (
                [f"dc:{d}" for d in sorted(dcs - {dc})] if member["dc"] == dc else [f"dc:{dc}"]
            )
            calls += [
                (member, "POST", "/admin/link-fault", {"target": t, "drop": True, "delay_ms": 0})
                for t in targets
            ]
        done, failed = self._each_member(calls)
        return Outcome("partition-dc", done, "p2prec chaos heal", failed)

    def _delay(self, argument: str | None) -> Outcome:
        delay_ms = positive_int("delay-wan", argument)
        dcs = sorted({m["dc"] for m in self.mesh["members"]})
        calls = [
            (
                m,
                "POST",
                "/admin/link-fault",
                {"target": f"dc:{d}", "drop": False, "delay_ms": delay_ms},
            )
            for m in self._nodes()
            for d in dcs
            if d != m["dc"]
        ]
        done, failed = self._each_member(calls)
        return Outcome("delay-wan", done, "p2prec chaos heal", failed)

    def _throttle(self, argument: str | None) -> Outcome:
        rate_kbit = positive_int("throttle-wan", argument)
        calls = [(m, "POST", "/admin/link-fault", {"rate_kbit": rate_kbit}) for m in self._nodes()]
        done, failed = self._each_member(calls)
        return Outcome("throttle-wan", done, "p2prec chaos heal", failed)

    def _poison(self, argument: str | None) -> Outcome:
        steps = positive_int("poison-trainer", argument)
        trainer = self._trainer()
        line = self._admin(trainer, "POST", "/admin/poison", {"steps": steps})
        undo = "nothing to do: the validator rolls the poisoned steps back"
        return Outcome("poison-trainer", [line], undo)

    def _nodes(self) -> list[dict[str, Any]]:
        """The members with the link-fault API (the trainer has none)."""
        return [m for m in self.mesh["members"] if m["role"] == "node"]

    def _trainer(self) -> dict[str, Any]:
        for member in self.mesh["members"]:
            if member["role"] == "trainer":
                found: dict[str, Any] = member
                return found
        raise ChaosError("no trainer in mesh.json")

    def _heal(self, _argument: str | None) -> Outcome:
        done: list[str] = []
        failed: list[str] = []
        for member in self.mesh["members"]:
            if is_p2prec_process(member.get("pid")):
                os.kill(int(member["pid"]), signal.SIGCONT)
        done.append("SIGCONT to every member (resumes paused ones)")
        if self.has_http():
            calls = [(m, "DELETE", "/admin/link-fault", None) for m in self._nodes()]
            more, failed = self._each_member(calls)
            done += more
        return Outcome("heal", done, "", failed)

    # -- checks -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return mesh_health(read_mesh(self.run_dir))

    def quiesce(self, paused: bool) -> str:
        if not self.has_http():
            return "trainer not paused (no HTTP admin API): roots are compared on a moving head"
        path = "/admin/pause" if paused else "/admin/resume"
        try:
            return self._admin(self._trainer(), "POST", path)
        except ChaosError as exc:
            return f"could not {'pause' if paused else 'resume'} the trainer: {exc}"
