"""``p2prec chaos run``: a seeded, bounded schedule of faults, then heal and time convergence.

The schedule is a pure function of the seed, the duration and the members, printed before it
runs, so a failing run replays with the same ``--seed``. Faults do not overlap: each one is
undone (resume, heal) before the next starts, and everything is healed at the end. Then the
trainer is paused when the backend can (so roots are compared on a quiet mesh) and the mesh's
health is polled until every node's root equals the trainer's, or a deadline.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable

from p2prec.chaos.actions import Backend, ChaosError, Member

FAULTS_MAX = 50  # a schedule never holds more faults than this, whatever the duration
HOLD_S = (1.0, 3.0)  # how long a pause, partition or WAN fault lasts
GAP_S = (0.5, 2.0)  # quiet time between two faults
POLL_S = 0.5
DELAYS_MS = (50, 100, 200)
RATES_KBIT = (256, 1024, 4096)
HELD_FAULTS = {
    "pause-node": "resume-node",
    "partition-dc": "heal",
    "delay-wan": "heal",
    "throttle-wan": "heal",
}


@dataclasses.dataclass(frozen=True)
class Fault:
    at_s: float
    action: str
    argument: str | None

    def line(self) -> str:
        return f"t={self.at_s:6.2f} s  {self.action} {self.argument or ''}".rstrip()


@dataclasses.dataclass(frozen=True)
class ChaosReport:
    converged: bool
    converge_s: float | None  # from the final heal to convergence
    applied: int
    skipped: int


def build_schedule(
    seed: int, duration_s: float, members: list[Member], supports: Callable[[str], bool]
) -> list[Fault]:
    rng = random.Random(seed)
    nodes = sorted(m.id for m in members if m.role == "node")
    dcs = sorted({m.dc for m in members if m.role == "node"})
    kinds = [a for a in (*HELD_FAULTS, "kill-node", "poison-trainer") if supports(a)]
    if not nodes or not kinds:
        return []
    faults: list[Fault] = []
    at_s = rng.uniform(*GAP_S)
    while at_s < duration_s and len(faults) < FAULTS_MAX - 1:
        kind = rng.choice(kinds)
        argument = _argument(rng, kind, nodes, dcs)
        faults.append(Fault(round(at_s, 2), kind, argument))
        hold_s = rng.uniform(*HOLD_S)
        if kind in HELD_FAULTS:
            end_s = min(at_s + hold_s, duration_s)
            undo_argument = argument if kind == "pause-node" else None
            faults.append(Fault(round(end_s, 2), HELD_FAULTS[kind], undo_argument))
        at_s += hold_s + rng.uniform(*GAP_S)
    return faults


def _argument(rng: random.Random, kind: str, nodes: list[str], dcs: list[str]) -> str | None:
    if kind in ("kill-node", "pause-node"):
        return rng.choice(nodes)
    if kind == "partition-dc":
        return rng.choice(dcs)
    if kind == "delay-wan":
        return str(rng.choice(DELAYS_MS))
    if kind == "throttle-wan":
        return str(rng.choice(RATES_KBIT))
    if kind == "poison-trainer":
        return str(rng.randint(5, 20))
    return None


def run_schedule(
    backend: Backend,
    schedule: list[Fault],
    converge_deadline_s: float,
    out: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ChaosReport:
    started = clock()
    applied = skipped = 0
    for fault in schedule:
        sleep(max(0.0, fault.at_s - (clock() - started)))
        try:
            for line in backend.apply(fault.action, fault.argument).lines():
                out(line)
            applied += 1
        except ChaosError as exc:
            out(f"{fault.action}: skipped ({exc})")
            skipped += 1
    for line in backend.apply("heal", None).lines():
        out(line)
    converge_s = wait_converged(backend, converge_deadline_s, out, clock, sleep)
    return ChaosReport(converge_s is not None, converge_s, applied, skipped)


def wait_converged(
    backend: Backend,
    deadline_s: float,
    out: Callable[[str], None],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> float | None:
    """Seconds until every node's root equals the trainer's, as the trainer reported it after
    the pause (an older status of it can match the nodes' equally old ones), or None at the
    deadline."""
    out(backend.quiesce(True))
    paused_s = time.time()
    started = clock()
    try:
        while clock() - started < deadline_s:
            health = backend.health()
            written_s = health.get("trainer_written_s")
            fresh = written_s is None or float(written_s) >= paused_s  # None: not reported
            if health["converged"] and fresh:
                return clock() - started
            sleep(POLL_S)
        return None
    finally:
        out(backend.quiesce(False))
