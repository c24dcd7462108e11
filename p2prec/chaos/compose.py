"""Chaos on the docker-compose mesh: docker kill/pause/unpause, network disconnect, tc.

Names follow docker-compose.yml: containers ``p2prec-<service>``, the WAN network
``p2prec-wan`` on subnet ``172.31.77.0/24`` (fixed, so a container's WAN interface is found by
its address), node state in ``/var/lib/p2prec``. Every node joins the WAN (any node can be the
datacenter's root of a shard group's tree), so partitioning a datacenter disconnects its nodes
from the WAN: they still reach each other on their datacenter's network. Delay and bandwidth
limits are ``tc`` qdiscs on the WAN interface inside each container (NET_ADMIN).

Commands are built as argv lists (tested without an engine) and run with ``subprocess``; the
``dry_run`` mode only prints them.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import orjson

from p2prec.chaos.actions import ChaosError, Member, Outcome, positive_int, require_argument
from p2prec.localmesh.health import deltas_behind
from p2prec.localmesh.plan import TRAINER_DC, TRAINER_ID, node_ids

CONTAINER_PREFIX = "p2prec-"
WAN_NETWORK = "p2prec-wan"
WAN_SUBNET = "172.31.77.0/24"
STATE_DIR = "/var/lib/p2prec"
ADMIN_PORT = 8080
COMMAND_TIMEOUT_S = 30.0
WAN_DEV = f"$(ip -o -4 addr show to {WAN_SUBNET} | awk '{{print $2}}' | cut -d@ -f1)"

Command = list[str]


def container(member_id: str) -> str:
    return f"{CONTAINER_PREFIX}{member_id}"


def default_members(dcs: int = 3, nodes_per_dc: int = 3) -> list[Member]:
    nodes = [Member(i, dc, "node") for i, dc in node_ids(dcs, nodes_per_dc)]
    return [Member(TRAINER_ID, TRAINER_DC, "trainer"), *nodes]


def tc_command(member_id: str, qdisc: str) -> Command:
    """``tc qdisc replace`` (or ``del`` when qdisc is empty) on the container's WAN interface."""
    action = f"replace dev {WAN_DEV} root {qdisc}" if qdisc else f"del dev {WAN_DEV} root"
    return ["docker", "exec", container(member_id), "sh", "-c", f"tc qdisc {action}"]


def admin_post_command(member_id: str, path: str, body: dict[str, Any] | None) -> Command:
    """An admin call from inside the container (the token is in its P2PREC_ADMIN_TOKEN)."""
    data = orjson.dumps(body or {}).decode()
    script = (
        "import os, urllib.request as u; "
        f"r = u.Request('http://127.0.0.1:{ADMIN_PORT}{path}', data={data!r}.encode(), "
        "method='POST', headers={'Authorization': 'Bearer ' + os.environ['P2PREC_ADMIN_TOKEN'], "
        "'Content-Type': 'application/json'}); print(u.urlopen(r, timeout=5).status)"
    )
    return ["docker", "exec", container(member_id), "python", "-c", script]


class ComposeBackend:
    name = "compose"

    def __init__(self, members: list[Member] | None = None, *, dry_run: bool = False) -> None:
        self._members = members or default_members()
        self.dry_run = dry_run

    def members(self) -> list[Member]:
        return list(self._members)

    def supports(self, action: str) -> bool:
        return True

    def nodes(self, dc: str | None = None) -> list[Member]:
        return [m for m in self._members if m.role == "node" and (dc is None or m.dc == dc)]

    # -- command construction (pure) --------------------------------------------------------

    def commands(self, action: str, argument: str | None) -> tuple[list[Command], str]:
        """The commands of one action and the command line that undoes it."""
        builders = {
            "kill-node": self._kill,
            "pause-node": self._pause,
            "resume-node": self._resume,
            "partition-dc": self._partition,
            "heal": self._heal,
            "delay-wan": self._delay,
            "throttle-wan": self._throttle,
            "poison-trainer": self._poison,
        }
        return builders[action](argument)

    def _known(self, member_id: str) -> str:
        if member_id not in {m.id for m in self._members}:
            raise ChaosError(f"{member_id!r}: no such member")
        return member_id

    def _kill(self, argument: str | None) -> tuple[list[Command], str]:
        member_id = self._known(require_argument("kill-node", argument))
        return [["docker", "kill", container(member_id)]], f"docker start {container(member_id)}"

    def _pause(self, argument: str | None) -> tuple[list[Command], str]:
        member_id = self._known(require_argument("pause-node", argument))
        return [["docker", "pause", container(member_id)]], f"docker unpause {container(member_id)}"

    def _resume(self, argument: str | None) -> tuple[list[Command], str]:
        member_id = self._known(require_argument("resume-node", argument))
        return [["docker", "unpause", container(member_id)]], ""

    def _partition(self, argument: str | None) -> tuple[list[Command], str]:
        dc = require_argument("partition-dc", argument)
        nodes = self.nodes(dc)
        if not nodes:
            raise ChaosError(f"partition-dc: no nodes in {dc!r}")
        commands = [
            ["docker", "network", "disconnect", WAN_NETWORK, container(m.id)] for m in nodes
        ]
        return commands, "p2prec chaos heal --backend compose"

    def _heal(self, _argument: str | None) -> tuple[list[Command], str]:
        """Reconnect, unpause and clear qdiscs everywhere; each may fail harmlessly (already
        connected, not paused, no qdisc)."""
        commands = [
            ["docker", "network", "connect", WAN_NETWORK, container(m.id)] for m in self.nodes()
        ]
        commands += [["docker", "unpause", container(m.id)] for m in self._members]
        commands += [tc_command(m.id, "") for m in self._members]
        return commands, ""

    def _delay(self, argument: str | None) -> tuple[list[Command], str]:
        delay_ms = positive_int("delay-wan", argument)
        qdisc = f"netem delay {delay_ms}ms"
        return [
            tc_command(m.id, qdisc) for m in self._members
        ], "p2prec chaos heal --backend compose"

    def _throttle(self, argument: str | None) -> tuple[list[Command], str]:
        rate_kbit = positive_int("throttle-wan", argument)
        qdisc = f"tbf rate {rate_kbit}kbit burst 32kbit latency 400ms"
        return [
            tc_command(m.id, qdisc) for m in self._members
        ], "p2prec chaos heal --backend compose"

    def _poison(self, argument: str | None) -> tuple[list[Command], str]:
        steps = positive_int("poison-trainer", argument)
        command = admin_post_command(TRAINER_ID, "/admin/poison", {"steps": steps})
        return [command], "nothing to do: the validator rolls the poisoned steps back"

    # -- running ----------------------------------------------------------------------------

    def apply(self, action: str, argument: str | None) -> Outcome:
        commands, undo = self.commands(action, argument)
        done, failed = [], []
        for command in commands:
            line = subprocess.list2cmdline(command)
            error = None if self.dry_run else _run(command)
            if error is None or action == "heal":
                done.append(line if error is None else f"{line} (ignored: {error})")
            else:
                failed.append(f"{line}: {error}")
        return Outcome(action, done, undo, failed)

    def health(self) -> dict[str, Any]:
        """Roots and vectors read from each container's status.json."""
        statuses = {m.id: self._status(m.id) for m in self._members}
        trainer = statuses.get(TRAINER_ID)
        nodes = [_entry(m, statuses[m.id], trainer) for m in self._members]
        converged = trainer is not None and all(
            s is not None
            and s["vector"] == trainer["vector"]
            and s["merkle_root"] == trainer["merkle_root"]
            for mid, s in statuses.items()
            if mid != TRAINER_ID
        )
        written_s = None if trainer is None else trainer.get("written_s")
        return {"nodes": nodes, "converged": converged, "trainer_written_s": written_s}

    def _status(self, member_id: str) -> dict[str, Any] | None:
        if self.dry_run:
            return None
        command = ["docker", "exec", container(member_id), "cat", f"{STATE_DIR}/status.json"]
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False
            )
            status = orjson.loads(done.stdout) if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, orjson.JSONDecodeError):
            return None
        return status if isinstance(status, dict) else None

    def quiesce(self, paused: bool) -> str:
        path = "/admin/pause" if paused else "/admin/resume"
        command = admin_post_command(TRAINER_ID, path, None)
        error = None if self.dry_run else _run(command)
        return subprocess.list2cmdline(command) + ("" if error is None else f" (failed: {error})")


def _entry(
    member: Member, status: dict[str, Any] | None, trainer: dict[str, Any] | None
) -> dict[str, Any]:
    behind = None
    if status is not None and trainer is not None:
        behind = deltas_behind(status["vector"], trainer["vector"])
    return {
        "id": member.id,
        "dc": member.dc,
        "role": member.role,
        "ready": status is not None,
        "epoch": None if status is None else status["epoch"],
        "merkle_root": None if status is None else status["merkle_root"],
        "lag_versions": behind,
    }


def _run(command: Command) -> str | None:
    """Run one command; None when it succeeded, else the reason."""
    if shutil.which(command[0]) is None:
        return f"{command[0]}: not installed"
    try:
        done = subprocess.run(command, capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        return done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
    return None
