"""One scenario's outcome: lost updates, invariant violations, time to converge after the last
fault, and node crashes (members that exited without the schedule killing them)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from p2prec.proof.checker import Lost, Violation

SHOWN_MAX = 10  # lines of each kind a report prints (the counts are always complete)


def crashes(restarts: dict[str, int], killed: Counter[str], alive: dict[str, bool]) -> list[str]:
    """Members that exited more often than the schedule killed them, or are not running at
    the end: one line each."""
    out = []
    for member, count in sorted(restarts.items()):
        if count > killed[member]:
            out.append(f"{member}: {count} restarts, {killed[member]} killed by the schedule")
    out += [f"{member}: not running at the end" for member, up in sorted(alive.items()) if not up]
    return out


@dataclass
class ScenarioReport:
    name: str
    seed: int
    schedule: list[str]
    lost: list[Lost] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    converge_s: float | None = None
    deltas: int = 0
    rollbacks: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.violations and not self.crashes

    def summary(self) -> str:
        converge = "never" if self.converge_s is None else f"{self.converge_s:.1f} s"
        return (
            f"{self.name} (seed {self.seed}): lost {len(self.lost)}, violations "
            f"{len(self.violations)}, converged {converge} after the last fault, crashes "
            f"{len(self.crashes)} ({self.deltas} deltas, {self.rollbacks} rollbacks, "
            f"{self.samples} samples)"
        )

    def text(self) -> str:
        lines = [self.summary(), "schedule:", *(f"  {line}" for line in self.schedule)]
        lines += [f"  violation {v.line()}" for v in self.violations[:SHOWN_MAX]]
        lines += [
            f"  lost {x.member}: shard {x.shard} version {x.version:#x} (holds {x.held:#x})"
            for x in self.lost[:SHOWN_MAX]
        ]
        lines += [f"  crash {line}" for line in self.crashes]
        lines.append(f"replay: P2PREC_CHAOS_SEED={self.seed}")
        return "\n".join(lines)
