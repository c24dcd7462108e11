"""`p2prec up --detach` / `status` / `chaos kill-node` / `down` on a real local mesh, and the
status JSON computed from a run directory built by hand.

The mesh test starts the supervisor and its ten members as real processes on 127.0.0.1 (random
ports), polls with deadlines, and checks at the end that every pid it ever saw is gone; its
cleanup kills leftovers by pid only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from p2prec.chaos.local import LocalBackend
from p2prec.cli import main
from p2prec.core.versions import Version
from p2prec.localmesh.health import deltas_behind, mesh_health
from p2prec.localmesh.runfile import mesh_pids, pid_alive, read_mesh, write_mesh
from p2prec.proof.scenario import run_cli

UP_DEADLINE_S = 60.0
RESTART_DEADLINE_S = 20.0
CONVERGE_DEADLINE_S = 60.0
COMMAND_TIMEOUT_S = 120.0
POLL_S = 0.2
NODE_ENTRY_KEYS = {"id", "dc", "role", "url", "pid", "ready", "epoch", "merkle_root", "lag_ms"}
SMALL_MESH = [
    *("--set", "store.row_shards=16", "--set", "store.dim=16"),
    *("--set", "trainer.hidden_units=8", "--set", "trainer.batch_samples=64"),
    *("--set", "trainer.samples_per_s_max=1000"),
]


p2prec = run_cli


def until(condition: Callable[[], bool], what: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"timed out after {deadline_s} s waiting for {what}"
        time.sleep(POLL_S)  # polling a condition with a deadline, not settling


class SeenPids:
    """Every pid of the mesh seen during the test: all must be gone after `down`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.pids: set[int] = set()

    def refresh(self) -> dict[str, Any]:
        mesh = read_mesh(self.run_dir)
        self.pids |= mesh_pids(mesh)
        return mesh

    def kill_leftovers(self) -> None:
        for pid in self.pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[tuple[Path, SeenPids]]:
    directory = tmp_path / "run"
    seen = SeenPids(directory)
    try:
        yield directory, seen
    finally:
        if (directory / "mesh.json").exists():
            seen.refresh()
            p2prec("down", "--run-dir", str(directory), timeout_s=60)
        seen.kill_leftovers()


def _member(mesh: dict[str, Any], member_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in mesh["members"] if m["id"] == member_id)
    return found


def test_up_kill_restart_converge_down(run_dir: tuple[Path, SeenPids]) -> None:
    pytest.importorskip("torch", reason="the mesh's trainer is `p2prec trainer` (torch)")
    directory, seen = run_dir
    started = time.monotonic()
    up = p2prec(
        "up", "--detach", "--run-dir", str(directory), "--trainer", "torch",
        "--restart-delay-s", "0.5",
        "--ready-deadline-s", str(UP_DEADLINE_S), *SMALL_MESH,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    assert "mesh ready after" in up.stdout
    print(f"p2prec up --detach: ready after {time.monotonic() - started:.1f} s")
    mesh = seen.refresh()
    assert len(mesh["members"]) == 10 and all(pid_alive(m["pid"]) for m in mesh["members"])
    again = p2prec("up", "--detach", "--run-dir", str(directory))
    assert again.returncode == 2 and "already running" in again.stderr

    status = p2prec("status", "--json", "--run-dir", str(directory))
    health = orjson.loads(status.stdout)
    assert {n["role"] for n in health["nodes"]} == {"trainer", "node"}
    assert all(set(n) >= NODE_ENTRY_KEYS for n in health["nodes"])

    victim = "dc2-n2"
    old_pid = _member(mesh, victim)["pid"]
    chaos = subprocess.run(
        [sys.executable, "-m", "p2prec.chaos", "kill-node", victim, "--run-dir", str(directory)],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert chaos.returncode == 0 and f"SIGKILL to {victim}" in chaos.stdout, chaos.stderr
    assert "undo:" in chaos.stdout

    def restarted() -> bool:
        member = _member(seen.refresh(), victim)
        return member["pid"] != old_pid and pid_alive(member["pid"]) and member["restarts"] == 1

    until(restarted, f"{victim} to be restarted", RESTART_DEADLINE_S)
    backend = LocalBackend(directory)
    assert "-> 200" in backend.quiesce(True)  # the trainer pauses: a quiet head to compare
    until(
        lambda: bool(mesh_health(seen.refresh())["converged"]),
        "every root to equal the trainer's",
        CONVERGE_DEADLINE_S,
    )
    text = p2prec("status", "--run-dir", str(directory))
    assert "all roots agree with the trainer" in text.stdout
    assert "-> 200" in backend.quiesce(False)

    chaos_run = subprocess.run(
        [sys.executable, "-m", "p2prec.chaos", "run", "--duration-s", "5", "--seed", "8",
         "--converge-deadline-s", str(CONVERGE_DEADLINE_S), "--run-dir", str(directory)],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert chaos_run.returncode == 0, chaos_run.stdout + chaos_run.stderr
    assert "seed 8" in chaos_run.stdout and "converged" in chaos_run.stdout
    seen.refresh()  # the schedule's kill-node restarted a member: its new pid must go too

    down = p2prec("down", "--run-dir", str(directory))
    assert down.returncode == 0, down.stderr
    seen.refresh()
    assert not [pid for pid in seen.pids if pid_alive(pid)], "processes left behind"


# --- status JSON from a hand-made run directory ---------------------------------------------


def _packed(seqs: list[int], epoch: int = 1) -> list[int]:
    return [Version(epoch, s).packed for s in seqs]


def _write_status(data_dir: Path, member_id: str, vector: list[int], root: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    status = {"id": member_id, "pid": os.getpid(), "epoch": 1, "merkle_root": root,
              "vector": vector, "summary": f"e1:{len(vector)}"}  # fmt: skip
    (data_dir / "status.json").write_bytes(orjson.dumps(status))


def _hand_made_mesh(tmp: Path, node_seqs: dict[str, list[int]], trainer_seqs: list[int]) -> Path:
    members: list[dict[str, Any]] = [{"id": "trainer", "dc": "dc0", "role": "trainer"}]
    members += [{"id": n, "dc": "dc1", "role": "node"} for n in node_seqs]
    for member in members:
        member |= {"pid": os.getpid(), "url": None, "data_dir": str(tmp / member["id"])}
    write_mesh(tmp, {"members": members, "publish_interval_ms": 100.0})
    _write_status(tmp / "trainer", "trainer", _packed(trainer_seqs), "aa")
    for node, seqs in node_seqs.items():
        root = "aa" if seqs == trainer_seqs else "bb"
        _write_status(tmp / node, node, _packed(seqs), root)
    return tmp


def test_status_json_converged_when_every_root_equals_the_trainers(tmp_path: Path) -> None:
    run = _hand_made_mesh(tmp_path, {"n1": [3, 4], "n2": [3, 4]}, [3, 4])
    health = mesh_health(read_mesh(run))
    assert health["converged"] and health["ready"]
    assert all(set(n) >= NODE_ENTRY_KEYS for n in health["nodes"])
    assert [n["lag_ms"] for n in health["nodes"]] == [0.0, 0.0, 0.0]


def test_status_json_lag_and_not_converged_when_a_node_is_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _hand_made_mesh(tmp_path, {"n1": [3, 4], "n2": [1, 4]}, [3, 4])
    assert main(["status", "--json", "--run-dir", str(run)]) == 0
    health = orjson.loads(capsys.readouterr().out)
    assert not health["converged"]
    lagging = next(n for n in health["nodes"] if n["id"] == "n2")
    assert lagging["lag_versions"] == 2 and lagging["lag_ms"] == 200.0


def test_deltas_behind_counts_an_older_epoch_as_the_heads_seq() -> None:
    assert deltas_behind(_packed([5, 5]), _packed([5, 7])) == 2
    assert deltas_behind(_packed([9], epoch=1), _packed([4], epoch=2)) == 4
    assert deltas_behind(_packed([5]), _packed([3])) == 0


def test_status_without_a_mesh_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--run-dir", str(tmp_path)]) == 2
    assert "no local mesh here" in capsys.readouterr().err
    assert main(["down", "--run-dir", str(tmp_path)]) == 2


def test_foreground_up_stops_every_member_on_ctrl_c(tmp_path: Path) -> None:
    """`p2prec up` in a terminal: SIGINT (Ctrl-C) to the supervisor stops all it started."""
    directory = tmp_path / "run"
    command = [sys.executable, "-m", "p2prec.cli", "up", "--run-dir", str(directory)]
    command += ["--trainer", "synthetic", "--nodes-per-dc", "1", *SMALL_MESH]
    up = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = SeenPids(directory)
    try:

        def all_started() -> bool:
            if not (directory / "mesh.json").exists():
                return False
            mesh = seen.refresh()
            return len(mesh["members"]) == 4 and all(pid_alive(m["pid"]) for m in mesh["members"])

        until(all_started, "the supervisor to start its members", UP_DEADLINE_S)
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=COMMAND_TIMEOUT_S)
        assert up.returncode == 0, output
        assert output.rstrip().endswith("stopped")
        assert not [pid for pid in seen.pids if pid_alive(pid)], "processes left behind"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=10)
        seen.kill_leftovers()


def test_supervisor_restarts_an_exited_member_and_backs_off_a_crash_loop(tmp_path: Path) -> None:
    from p2prec.localmesh.plan import MemberSpec
    from p2prec.localmesh.supervisor import Supervisor

    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    spec = MemberSpec("dc1-n1", "dc1", "node", 1, 0, str(tmp_path / "state"), crash)
    supervisor = Supervisor(tmp_path, [spec], {"run_dir": str(tmp_path)}, restart_delay_s=1.0)
    member = supervisor.members[0]
    try:
        supervisor.start_all(now_s=0.0)
        first_pid = member.pid
        assert member.proc is not None and member.proc.wait(timeout=30) == 3
        supervisor.tick(now_s=0.5)  # exited 0.5 s after its start: a crash loop, wait 2 s
        assert member.delay_s == 2.0
        supervisor.tick(now_s=2.0)
        assert member.restarts == 0 and member.pid == first_pid
        supervisor.tick(now_s=2.5)
        assert member.restarts == 1 and member.pid != first_pid
        assert read_mesh(tmp_path)["members"][0]["pid"] == member.pid
        assert member.proc is not None and member.proc.wait(timeout=30) == 3
        supervisor.tick(now_s=20.0)  # it ran 17.5 s this time: back to the configured delay
        assert member.delay_s == 1.0
    finally:
        supervisor.stop_all(wait_s=5.0)


def test_ports_are_chosen_distinct_for_the_whole_plan(tmp_path: Path) -> None:
    """Ports picked one at a time (bind to 0, close) came back again: 10 repeats in 500,
    and `p2prec up` once gave a node's HTTP server its own mesh port (the node then exited at
    every restart: address already in use). All of a plan's ports come from one allocation."""
    from p2prec.io.localmesh import free_ports
    from p2prec.localmesh.plan import PlanOptions, build_plan

    many = free_ports(500)
    assert len(set(many)) == len(many)
    plan = build_plan(PlanOptions(tmp_path, dcs=4, nodes_per_dc=8), "token")
    ports = [m.mesh_port for m in plan] + [m.http_port for m in plan if m.http_port]
    assert len(set(ports)) == len(ports) > len(plan)


def test_synthetic_trainer_waits_for_every_node_of_the_plan(tmp_path: Path) -> None:
    """The nodes start after the trainer: its synthetic stream must wait until all of them
    joined (else its first deltas reach them by catch-up only). The command must parse."""
    from p2prec.cli import build_parser
    from p2prec.localmesh.plan import PlanOptions, build_plan

    plan = build_plan(PlanOptions(tmp_path, dcs=2, nodes_per_dc=3, trainer="synthetic"), "t")
    trainer = next(m for m in plan if m.role == "trainer")
    args = build_parser().parse_args(trainer.command[3:])
    assert args.synthetic_wait_members == 6 == sum(m.role == "node" for m in plan)
