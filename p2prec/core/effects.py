"""What drivers feed the core (events) and what the core asks of them (effects)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Route(enum.Enum):
    """How a message travels; part of the (unsigned) transport envelope."""

    TREE = "tree"  # down a dissemination tree: the receiver relays it to its children
    REPAIR = "repair"  # catch-up or control answer: applied, never relayed
    MESH = "mesh"  # anti-entropy and membership gossip


@dataclass(frozen=True, eq=False)
class Incoming:
    """A message from a peer. Signed types reach the core only after their signature verified;
    ``raw`` is what to forward unchanged (the frames; the message itself in simulation)."""

    addr: str
    msg: Any
    raw: object = None
    route: Route = Route.MESH


@dataclass(frozen=True, eq=False)
class Send:
    """Send ``msg`` to ``addr``: forward ``raw`` untouched when given, else encode ``msg``."""

    addr: str
    msg: Any
    raw: object = None
    route: Route = Route.MESH


@dataclass(frozen=True, eq=False)
class Persist:
    """A signed message was applied: append its frames to the node's log on disk."""

    raw: object


@dataclass(frozen=True, eq=False)
class Note:
    """Something worth a log line or a metric (the core does not log)."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


Effect = Send | Persist | Note
