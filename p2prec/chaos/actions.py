"""The chaos actions, what a backend reports after one, and the backend interface."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

ACTIONS = (
    "kill-node",
    "pause-node",
    "resume-node",
    "partition-dc",
    "heal",
    "delay-wan",
    "throttle-wan",
    "poison-trainer",
)
# What the action's argument names (None: it takes none).
ARGUMENTS: dict[str, str | None] = {
    "kill-node": "NODE_ID",
    "pause-node": "NODE_ID",
    "resume-node": "NODE_ID",
    "partition-dc": "DC",
    "heal": None,
    "delay-wan": "DELAY_MS",
    "throttle-wan": "RATE_KBIT",
    "poison-trainer": "STEPS",
}


class ChaosError(Exception):
    """An action that cannot be done here: one line for the user."""


@dataclasses.dataclass(frozen=True)
class Member:
    id: str
    dc: str
    role: str  # "trainer" or "node"


@dataclasses.dataclass
class Outcome:
    """What an action did (one line per step) and how to undo it."""

    action: str
    done: list[str]
    undo: str
    failed: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.action}: {line}" for line in self.done]
        out += [f"{self.action}: FAILED {line}" for line in self.failed]
        out.append(f"  undo: {self.undo}" if self.undo else "  undo: nothing to undo")
        return out


class Backend(Protocol):
    """A mesh chaos can act on: the compose mesh or the local mesh of ``p2prec up``."""

    name: str

    def members(self) -> list[Member]: ...

    def supports(self, action: str) -> bool: ...

    def apply(self, action: str, argument: str | None) -> Outcome: ...

    def health(self) -> dict[str, Any]:
        """``status --json``'s object: at least ``nodes`` and ``converged``."""
        ...

    def quiesce(self, paused: bool) -> str:
        """Pause (or resume) the trainer's publishing so roots can be compared; a line saying
        what happened."""
        ...


def require_argument(action: str, argument: str | None) -> str:
    if argument is None or argument == "":
        raise ChaosError(f"{action}: needs {ARGUMENTS[action]}")
    return argument


def positive_int(action: str, argument: str | None) -> int:
    text = require_argument(action, argument)
    try:
        value = int(text)
    except ValueError:
        raise ChaosError(
            f"{action}: {ARGUMENTS[action]} must be an integer, got {text!r}"
        ) from None
    if value <= 0:
        raise ChaosError(f"{action}: {ARGUMENTS[action]} must be > 0, got {value}")
    return value
