"""Chaos without a mesh: the compose backend's commands (no Docker engine here), the CLI's
dry run, the seeded schedule, and the runner against a scripted backend on a virtual clock."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from p2prec.chaos.actions import ACTIONS, ChaosError, Member, Outcome
from p2prec.chaos.cli import main as chaos_main
from p2prec.chaos.compose import WAN_NETWORK, ComposeBackend, container
from p2prec.chaos.runner import FAULTS_MAX, HELD_FAULTS, build_schedule, run_schedule
from p2prec.cli import main

COMPOSE = ComposeBackend(dry_run=True)


def test_compose_kill_pause_resume_are_docker_commands_on_the_containers() -> None:
    assert COMPOSE.commands("kill-node", "dc2-n3") == (
        [["docker", "kill", "p2prec-dc2-n3"]],
        "docker start p2prec-dc2-n3",
    )
    assert COMPOSE.commands("pause-node", "dc1-n1") == (
        [["docker", "pause", "p2prec-dc1-n1"]],
        "docker unpause p2prec-dc1-n1",
    )
    assert COMPOSE.commands("resume-node", "dc1-n1")[0] == [["docker", "unpause", "p2prec-dc1-n1"]]


def test_compose_partition_disconnects_the_dcs_nodes_from_the_wan_and_heal_reconnects() -> None:
    commands, undo = COMPOSE.commands("partition-dc", "dc3")
    assert commands == [
        ["docker", "network", "disconnect", WAN_NETWORK, container(f"dc3-n{i}")] for i in (1, 2, 3)
    ]
    assert undo == "p2prec chaos heal --backend compose"
    heal, _ = COMPOSE.commands("heal", None)
    for i in (1, 2, 3):
        assert ["docker", "network", "connect", WAN_NETWORK, container(f"dc3-n{i}")] in heal
    assert ["docker", "unpause", "p2prec-trainer"] in heal
    assert sum("tc qdisc del" in c[-1] for c in heal) == 10  # every member's WAN qdisc


def test_compose_wan_delay_and_throttle_are_tc_on_the_wan_interface() -> None:
    delay, _ = COMPOSE.commands("delay-wan", "150")
    throttle, _ = COMPOSE.commands("throttle-wan", "512")
    assert len(delay) == len(throttle) == 10
    assert delay[0][:5] == ["docker", "exec", "p2prec-trainer", "sh", "-c"]
    assert "172.31.77.0/24" in delay[0][5] and delay[0][5].endswith("root netem delay 150ms")
    assert "root tbf rate 512kbit" in throttle[3][5]


def test_compose_poison_posts_to_the_trainers_admin_api_inside_its_container() -> None:
    (command,), _ = COMPOSE.commands("poison-trainer", "12")
    assert command[:4] == ["docker", "exec", "p2prec-trainer", "python"]
    assert "/admin/poison" in command[-1] and '{"steps":12}' in command[-1]
    assert "P2PREC_ADMIN_TOKEN" in command[-1]


@pytest.mark.parametrize(
    ("action", "argument"),
    [("kill-node", None), ("kill-node", "nobody"), ("delay-wan", "-5"), ("partition-dc", "dc9")],
)
def test_compose_bad_arguments_are_one_line_errors(action: str, argument: str | None) -> None:
    with pytest.raises(ChaosError):
        COMPOSE.commands(action, argument)


def test_chaos_cli_dry_run_prints_the_commands_and_the_undo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = ["--run-dir", str(tmp_path)]  # no mesh.json there: the compose backend
    assert main(["chaos", "partition-dc", "dc2", "--dry-run", *run_dir]) == 0
    out = capsys.readouterr().out
    assert "backend: compose" in out
    assert f"docker network disconnect {WAN_NETWORK} p2prec-dc2-n1" in out
    assert "undo: p2prec chaos heal --backend compose" in out
    assert chaos_main(["kill-node", "dc1-n2", "--backend", "compose", "--dry-run"]) == 0
    assert "docker kill p2prec-dc1-n2" in capsys.readouterr().out


def test_local_backend_without_a_mesh_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert chaos_main(["heal", "--backend", "local", "--run-dir", str(tmp_path)]) == 2
    assert "no local mesh here" in capsys.readouterr().err


# --- the runner ------------------------------------------------------------------------------

MEMBERS = [Member("trainer", "dc0", "trainer")] + [
    Member(f"dc{d}-n{n}", f"dc{d}", "node") for d in (1, 2, 3) for n in (1, 2)
]


def test_schedule_is_a_function_of_the_seed_bounded_and_undone() -> None:
    first = build_schedule(7, 30.0, MEMBERS, lambda _a: True)
    assert first == build_schedule(7, 30.0, MEMBERS, lambda _a: True)
    assert first != build_schedule(8, 30.0, MEMBERS, lambda _a: True)
    assert 0 < len(first) <= FAULTS_MAX
    assert all(0 < f.at_s <= 30.0 for f in first)
    assert [f.at_s for f in first] == sorted(f.at_s for f in first)
    for i, fault in enumerate(first):
        if fault.action in HELD_FAULTS:  # a held fault is undone by the very next step
            assert first[i + 1].action == HELD_FAULTS[fault.action]
    long = build_schedule(1, 1e6, MEMBERS, lambda _a: True)
    assert len(long) <= FAULTS_MAX


def test_schedule_uses_only_what_the_backend_supports() -> None:
    local_like = build_schedule(3, 60.0, MEMBERS, lambda a: a in ("kill-node", "pause-node"))
    assert {f.action for f in local_like} <= {"kill-node", "pause-node", "resume-node"}
    assert build_schedule(3, 60.0, MEMBERS, lambda _a: False) == []


class ScriptedBackend:
    """Records actions; converges on the third health poll; one action fails."""

    name = "scripted"

    def __init__(self) -> None:
        self.applied: list[tuple[str, str | None]] = []
        self.polls = 0

    def members(self) -> list[Member]:
        return MEMBERS

    def supports(self, action: str) -> bool:
        return action in ACTIONS

    def apply(self, action: str, argument: str | None) -> Outcome:
        if action == "poison-trainer":
            raise ChaosError("no admin API")
        self.applied.append((action, argument))
        return Outcome(action, [f"did {action}"], "")

    def health(self) -> dict[str, Any]:
        self.polls += 1
        return {"nodes": [], "converged": self.polls >= 3}

    def quiesce(self, paused: bool) -> str:
        return f"paused={paused}"


class VirtualClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds


def test_runner_applies_the_schedule_heals_and_times_convergence() -> None:
    backend, clock = ScriptedBackend(), VirtualClock()
    lines: list[str] = []
    schedule = build_schedule(11, 20.0, MEMBERS, backend.supports)
    report = run_schedule(backend, schedule, 30.0, lines.append, clock, clock.sleep)
    skipped = sum(f.action == "poison-trainer" for f in schedule)
    assert report.converged and report.converge_s == pytest.approx(1.0)  # two polls of 0.5 s
    assert report.applied == len(schedule) - skipped and report.skipped == skipped
    assert backend.applied[-1] == ("heal", None)
    assert lines[-1] == "paused=False" and "paused=True" in lines


def test_runner_reports_no_convergence_at_the_deadline() -> None:
    backend, clock = ScriptedBackend(), VirtualClock()
    backend.polls = -1_000_000  # never converges
    report = run_schedule(backend, [], 5.0, lambda _line: None, clock, clock.sleep)
    assert not report.converged and report.converge_s is None
    assert clock.now_s == pytest.approx(5.0)


class StaleTrainerBackend(ScriptedBackend):
    """Roots agree at once, but the trainer's status predates the pause for two polls."""

    def health(self) -> dict[str, Any]:
        self.polls += 1
        written_s = time.time() + (-60.0 if self.polls < 3 else 60.0)
        return {"nodes": [], "converged": True, "trainer_written_s": written_s}


def test_runner_waits_for_a_trainer_status_taken_after_the_pause() -> None:
    backend, clock = StaleTrainerBackend(), VirtualClock()
    report = run_schedule(backend, [], 30.0, lambda _line: None, clock, clock.sleep)
    assert report.converged and report.converge_s == pytest.approx(1.0)  # the third poll


def test_every_action_has_an_executable_wrapper_in_chaos() -> None:
    chaos_dir = Path(__file__).resolve().parent.parent / "chaos"
    for action in (*ACTIONS, "run"):
        wrapper = chaos_dir / action
        assert wrapper.is_file() and wrapper.stat().st_mode & 0o111, action
        assert f'-m p2prec.chaos {action} "$@"' in wrapper.read_text()
