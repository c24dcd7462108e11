"""The SWIM membership messages: pure data, JSON-friendly (str, int, lists).

``to_body``/``from_body`` turn a message into a ``(kind, body)`` pair of plain JSON values and
back; the wire layer carries that pair (``MembershipEnvelope``). ``from_body`` checks every field
of peer input and raises ``MembershipDecodeError`` (a ``ValueError``) on anything malformed.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, TypeAlias

INCARNATION_MAX = (1 << 63) - 1  # incarnations and sequence numbers fit a signed 64-bit int
NAME_CHARS_MAX = 256  # node ids, addresses and datacenter names
RECORDS_MAX = 4096  # records in one message (piggyback or full state)


class MemberState(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"  # failed a probe; dead unless it refutes before its suspicion times out
    DEAD = "dead"  # declared dead by a suspicion timeout
    LEFT = "left"  # announced its own graceful departure


@dataclass(frozen=True)
class MemberRecord:
    """What one node believes about another (or itself); also the unit of gossip."""

    node_id: str  # stable identity: survives restarts and address changes
    addr: str  # where to send to it (changes when it restarts elsewhere)
    dc: str  # its datacenter (the trees put one WAN copy per datacenter)
    incarnation: int  # raised only by the node itself, to refute suspicion or move address
    state: MemberState
    # Who asserted this state: the suspecting/declaring node for suspect/dead, the node itself
    # for alive/left. Distinct reporters of a suspicion are Lifeguard's confirmations.
    reporter: str = ""


@dataclass(frozen=True)
class Ping:
    """A direct probe: ``target_id`` answers with an ``Ack`` carrying the same ``seq``."""

    seq: int  # matches the ack to this probe
    sender_id: str  # who probes (its own record in ``updates`` may move its address)
    target_id: str  # whom it is meant for: a node now at a reused address ignores it
    updates: list[MemberRecord]  # piggybacked gossip


@dataclass(frozen=True)
class Ack:
    """Answer to a ``Ping``; a helper forwards it to the prober of an indirect probe."""

    seq: int  # the prober's sequence number (a helper rewrites its own into the prober's)
    sender_id: str
    updates: list[MemberRecord]


@dataclass(frozen=True)
class PingReq:
    """Indirect probe: the receiver pings ``target_addr`` and forwards the ack (or a Nack)."""

    seq: int  # the prober's sequence number, echoed in the forwarded Ack or the Nack
    sender_id: str
    target_id: str
    target_addr: str  # the prober's view of the address (the helper's may be older)
    updates: list[MemberRecord]


@dataclass(frozen=True)
class Nack:
    """A helper could not reach the target in time: proof that the prober's own network and
    CPU work (Lifeguard: missing nacks raise the prober's local-health multiplier)."""

    seq: int
    sender_id: str


@dataclass(frozen=True)
class Gossip:
    """Membership news pushed to a few random peers every gossip interval."""

    sender_id: str
    updates: list[MemberRecord]


@dataclass(frozen=True)
class PushPull:
    """Full-state exchange: on join, on periodic re-join to a seed (heals long partitions)."""

    sender_id: str
    members: list[MemberRecord]  # the sender's whole member table, itself included
    is_reply: bool  # a request is answered with the receiver's table; a reply is not


MembershipMessage: TypeAlias = Ping | Ack | PingReq | Nack | Gossip | PushPull
MESSAGE_TYPES: tuple[type, ...] = (Ping, Ack, PingReq, Nack, Gossip, PushPull)

_KINDS: dict[type, str] = {
    Ping: "ping",
    Ack: "ack",
    PingReq: "ping_req",
    Nack: "nack",
    Gossip: "gossip",
    PushPull: "push_pull",
}
_TYPES: dict[str, type] = {kind: cls for cls, kind in _KINDS.items()}
_RECORD_LISTS = ("updates", "members")


class MembershipDecodeError(ValueError):
    """A peer sent a membership message that does not parse."""


def is_sane(record: object) -> bool:
    """Whether ``record`` is a well-formed ``MemberRecord`` (peer input is checked again here:
    a driver may hand the core messages it did not build through ``from_body``)."""
    if not isinstance(record, MemberRecord):
        return False
    for name in (record.node_id, record.addr, record.dc, record.reporter):
        if not isinstance(name, str) or len(name) > NAME_CHARS_MAX:
            return False
    incarnation = record.incarnation
    return (
        bool(record.node_id)
        and isinstance(incarnation, int)
        and 0 <= incarnation <= INCARNATION_MAX
        and isinstance(record.state, MemberState)
    )


def record_to_json(record: MemberRecord) -> dict[str, Any]:
    return {
        "node_id": record.node_id,
        "addr": record.addr,
        "dc": record.dc,
        "incarnation": record.incarnation,
        "state": str(record.state),
        "reporter": record.reporter,
    }


def to_body(msg: MembershipMessage) -> tuple[str, dict[str, Any]]:
    """``msg`` as a kind and a dict of plain JSON values."""
    body: dict[str, Any] = {}
    for name, value in vars(msg).items():
        if name in _RECORD_LISTS:
            body[name] = [record_to_json(r) for r in value]
        else:
            body[name] = value
    return _KINDS[type(msg)], body


def from_body(kind: str, body: dict[str, Any]) -> MembershipMessage:
    """Parse a peer's ``(kind, body)``; raises ``MembershipDecodeError`` when malformed."""
    cls = _TYPES.get(kind)
    if cls is None:
        raise MembershipDecodeError(f"unknown membership message kind {kind!r}")
    if not isinstance(body, dict):
        raise MembershipDecodeError(f"{kind}: body must be an object")
    fields: dict[str, Any] = {}
    for name in (f.name for f in dataclasses.fields(cls)):
        if name not in body:
            raise MembershipDecodeError(f"{kind}: missing field {name!r}")
        fields[name] = _field(kind, name, body[name])
    message: MembershipMessage = cls(**fields)
    return message


def _field(kind: str, name: str, value: object) -> object:
    if name in _RECORD_LISTS:
        if not isinstance(value, list) or len(value) > RECORDS_MAX:
            raise MembershipDecodeError(f"{kind}.{name}: a list of at most {RECORDS_MAX}")
        return [record_from_json(item) for item in value]
    if name == "is_reply":
        if not isinstance(value, bool):
            raise MembershipDecodeError(f"{kind}.{name}: expected a bool")
        return value
    if name == "seq":
        return _int(f"{kind}.{name}", value)
    return _name(f"{kind}.{name}", value)


def record_from_json(item: object) -> MemberRecord:
    if not isinstance(item, dict):
        raise MembershipDecodeError("member record: expected an object")
    try:
        state = MemberState(_name("record.state", item.get("state")))
    except ValueError:
        raise MembershipDecodeError(f"member record: bad state {item.get('state')!r}") from None
    record = MemberRecord(
        node_id=_name("record.node_id", item.get("node_id")),
        addr=_name("record.addr", item.get("addr")),
        dc=_name("record.dc", item.get("dc")),
        incarnation=_int("record.incarnation", item.get("incarnation")),
        state=state,
        reporter=_name("record.reporter", item.get("reporter", "")),
    )
    if not record.node_id:
        raise MembershipDecodeError("member record: empty node_id")
    return record


def _name(where: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > NAME_CHARS_MAX:
        raise MembershipDecodeError(f"{where}: expected a string of at most {NAME_CHARS_MAX}")
    return value


def _int(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MembershipDecodeError(f"{where}: expected an integer")
    if not 0 <= value <= INCARNATION_MAX:
        raise MembershipDecodeError(f"{where}: {value} out of range")
    return value
