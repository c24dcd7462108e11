"""What the rogue peer sends: hostile messages, each with the layer that must stop it.

Pure builders (no sockets): every ``Probe`` is a whole ZeroMQ multipart as a DEALER sends it,
``[envelope, *message frames]``, and names the layer of the receiving node that must refuse it
(``Layer``), so that a test can compare what the rogue sent with the node's counters:

- ``TRANSPORT``: the transport's checks (envelope, frame count): ``transport.malformed``;
- ``SPOOFED``: an envelope naming another node than the CURVE key: ``transport.spoofed``;
- ``CODEC``: ``codec.decode`` (framing, limits, types, signatures) or the membership parser:
  ``driver.decode_rejected``;
- ``REPLICA``: well-formed but refused by the replica (unverifiable snapshots):
  ``counters.rejected``;
- ``HARMLESS``: accepted as what it is and changes nothing (a genuine delta again: a duplicate;
  a step of a fenced epoch: fenced; requests for shards that do not exist: ignored);
- ``LINK``: over the ROUTER's ``ZMQ_MAXMSGSIZE``: libzmq drops the connection unread.

Builders take the genuine signed frames the rogue captured from the mesh (``list[bytes]``,
header first), so that truncations and tamperings start from real messages.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson

from p2prec.core.membership_messages import (
    INCARNATION_MAX,
    Gossip,
    MemberRecord,
    MemberState,
    to_body,
)
from p2prec.core.versions import SEQ_BITS, VersionVector
from p2prec.wire.codec import encode
from p2prec.wire.limits import DEFAULT_LIMITS, WireLimits
from p2prec.wire.messages import (
    PROTOCOL_VERSION,
    ControlRequest,
    MembershipEnvelope,
    MsgType,
    ParamDelta,
    ShardSnapshot,
    SyncDigest,
    SyncRequest,
    TableRows,
)
from p2prec.wire.signing import SIGNATURE_BYTES, Signer

#: The transport's envelope bound (io/transport.py ENVELOPE_MAX_BYTES), exceeded on purpose.
ENVELOPE_OVER_BYTES = 2048
#: Slack libzmq allows over ``max_frame_bytes`` (io/transport.py CURVE_SLACK_BYTES), exceeded.
LINK_OVER_BYTES = 4096
ROOT_BYTES = 16
GHOST_ID = "ghost-1"  # a member the rogue makes up
GHOST_ADDR = "127.0.0.1:9"  # where nothing listens


class Layer(enum.Enum):
    """Where a probe must be stopped (see the module docstring)."""

    TRANSPORT = "transport"
    SPOOFED = "spoofed"
    CODEC = "codec"
    REPLICA = "replica"
    HARMLESS = "harmless"
    LINK = "link"


@dataclass(frozen=True)
class Probe:
    """One hostile message: its attack class, the multipart, the layer that must stop it."""

    kind: str
    frames: tuple[bytes, ...]
    layer: Layer


@dataclass(frozen=True)
class Envelopes:
    """The transport envelopes the rogue sends with (``from`` is where it listens)."""

    addr: str  # host:port of the rogue's listener (replies to its requests come there)
    node: str  # the node id of the CURVE key it holds

    def of(self, route: str, node: str | None = None) -> bytes:
        return orjson.dumps({"from": self.addr, "node": node or self.node, "route": route})


def _probe(kind: str, envelope: bytes, frames: Sequence[bytes | memoryview], layer: Layer) -> Probe:
    return Probe(kind, (envelope, *(bytes(f) for f in frames)), layer)


# --- garbage ---------------------------------------------------------------------------------


def garbage(rng: np.random.Generator, env: Envelopes, count: int) -> list[Probe]:
    """``count`` random messages, in turn: random frames only (the envelope is garbage too),
    a valid envelope with random frames, and random JSON headers of random types."""
    makers = (_random_frames, _random_body, _random_header)
    return [makers[i % len(makers)](rng, env) for i in range(count)]


def _random_bytes(rng: np.random.Generator, max_bytes: int) -> bytes:
    return rng.integers(0, 256, int(rng.integers(0, max_bytes + 1)), dtype=np.uint8).tobytes()


def _random_frames(rng: np.random.Generator, env: Envelopes) -> Probe:
    frames = [_random_bytes(rng, 512) for _ in range(int(rng.integers(1, 6)))]
    frames[0] = b"\xff" + frames[0]  # never JSON: the envelope must fail to parse
    return Probe("garbage.frames", tuple(frames), Layer.TRANSPORT)


def _random_body(rng: np.random.Generator, env: Envelopes) -> Probe:
    frames = [_random_bytes(rng, 2048) for _ in range(int(rng.integers(2, 7)))]
    frames[0] = b"\xff" + frames[0]  # never a JSON header
    return _probe("garbage.body", env.of("tree"), frames, Layer.CODEC)


def _random_header(rng: np.random.Generator, env: Envelopes) -> Probe:
    """A JSON header of any type id, with random buffer descriptors and no type fields."""
    n = int(rng.integers(0, 4))
    descs = [
        [str(rng.choice(["<i8", "<f4", "|u1", ">f8"])), [int(rng.integers(0, 9))]] for _ in range(n)
    ]
    header = orjson.dumps({"p": PROTOCOL_VERSION, "t": int(rng.integers(0, 12)), "b": descs})
    signature = _random_bytes(rng, SIGNATURE_BYTES) if rng.random() < 0.5 else b""
    buffers = [_random_bytes(rng, 64) for _ in range(n)]
    return _probe("garbage.header", env.of("tree"), [header, signature, *buffers], Layer.CODEC)


# --- truncation ------------------------------------------------------------------------------


def prefix_lengths(size: int) -> list[int]:
    """One length of each class shorter than ``size``: empty, one byte, half, all but one."""
    return sorted({n for n in (0, 1, size // 2, size - 1) if 0 <= n < size})


def truncated(env: Envelopes, genuine: Sequence[bytes]) -> list[Probe]:
    """Every frame of a genuine signed message cut at every prefix length class; the message
    cut after every frame count; the envelope cut."""
    envelope = env.of("tree")
    probes = []
    for i, frame in enumerate(genuine):
        for n in prefix_lengths(len(frame)):
            frames = [*genuine[:i], frame[:n], *genuine[i + 1 :]]
            probes.append(_probe(f"truncated.frame{i}", envelope, frames, Layer.CODEC))
    for k in range(len(genuine)):
        layer = Layer.TRANSPORT if k < 2 else Layer.CODEC  # fewer than 2 frames: transport
        probes.append(_probe("truncated.frames", envelope, genuine[:k], layer))
    for n in prefix_lengths(len(envelope)):
        probes.append(Probe("truncated.envelope", (envelope[:n], *genuine), Layer.TRANSPORT))
    return probes


# --- forgeries: unsigned, wrongly signed, tampered -------------------------------------------


def next_step(delta: ParamDelta, vector: Sequence[int]) -> ParamDelta:
    """``delta``'s shape (same shards, tables, rows) as the step that would come next on a node
    holding ``vector``: what an accepted forgery would apply."""
    bases = tuple(int(vector[s]) if s < len(vector) else 0 for s in delta.shards)
    versions = tuple(b + 1 if b >> SEQ_BITS else (1 << SEQ_BITS) + 1 for b in bases)
    tables = {
        name: TableRows(t.keys, np.full(len(t), max(versions), np.int64), np.asarray(t.rows) + 1)
        for name, t in delta.tables.items()
    }
    return replace(delta, bases=bases, versions=versions, tables=tables)


def forged(env: Envelopes, delta: ParamDelta, genuine: Sequence[bytes]) -> list[Probe]:
    """Valid-looking deltas without the trainer's signature (``delta``: a forged next step),
    and genuine signed frames tampered with."""
    envelope = env.of("tree")
    unsigned = encode(delta, None)
    probes = [
        _probe("unsigned", envelope, unsigned, Layer.CODEC),
        _probe("signed.other_key", envelope, encode(delta, Signer.generate()), Layer.CODEC),
        _probe("signed.zero", envelope, _with(unsigned, 1, bytes(SIGNATURE_BYTES)), Layer.CODEC),
        _probe("signed.borrowed", envelope, _with(unsigned, 1, genuine[1]), Layer.CODEC),
    ]
    for i in range(len(genuine)):
        if genuine[i]:
            frames = _with(genuine, i, _flip_last_byte(genuine[i]))
            probes.append(_probe(f"tampered.frame{i}", envelope, frames, Layer.CODEC))
    return probes


def _with(frames: Sequence[bytes | memoryview], i: int, frame: bytes) -> list[bytes]:
    out = [bytes(f) for f in frames]
    out[i] = frame
    return out


def _flip_last_byte(frame: bytes) -> bytes:
    """The last byte changed: in a header (``...}``) a space keeps it valid JSON."""
    last = frame[-1:]
    return frame[:-1] + (b" }" if last == b"}" else bytes([frame[-1] ^ 0x01]))


# --- replays ---------------------------------------------------------------------------------


def replayed(env: Envelopes, genuine: Sequence[Sequence[bytes]], kind: str) -> list[Probe]:
    """Genuine signed messages sent again, down the tree and as catch-up answers."""
    probes = []
    for i, frames in enumerate(genuine):
        route = "tree" if i % 2 == 0 else "repair"
        probes.append(_probe(kind, env.of(route), frames, Layer.HARMLESS))
    return probes


# --- oversized -------------------------------------------------------------------------------


def oversized(env: Envelopes, limits: WireLimits = DEFAULT_LIMITS) -> list[Probe]:
    """Over every bound the wire checks, below the ROUTER's message size (see ``over_link``)."""
    envelope = env.of("tree")
    big_header = orjson.dumps({"p": 1, "t": 1, "pad": "x" * (limits.max_header_bytes + 1)})
    many = [b"{}", b"", *([b"x"] * limits.max_frames)]
    shape = [limits.max_frame_bytes, limits.max_frame_bytes]
    huge_shape = orjson.dumps({"p": 1, "t": 6, "shard": 0, "version": 1, "b": [["|u1", shape]]})
    long_request = _sync_request_frames(env.node, limits.max_vector_len + 1)
    return [
        _probe("oversized.header", envelope, [big_header, b""], Layer.CODEC),
        _probe("oversized.frame_count", envelope, many, Layer.TRANSPORT),
        _probe("oversized.shape", envelope, [huge_shape, b"", b"\x00" * 8], Layer.CODEC),
        _probe("oversized.vector", env.of("mesh"), long_request, Layer.CODEC),
        Probe("oversized.envelope", (_long_envelope(env), b"{}", b""), Layer.TRANSPORT),
    ]


def over_link(env: Envelopes, limits: WireLimits = DEFAULT_LIMITS) -> Probe:
    """One frame over the ROUTER's ``ZMQ_MAXMSGSIZE``: libzmq must drop the connection unread
    (send it last on its own socket: what was queued behind it is lost with the link)."""
    frame = bytes(max(limits.max_frame_bytes, limits.max_header_bytes) + LINK_OVER_BYTES)
    return Probe("oversized.link", (env.of("tree"), b"{}", b"", frame), Layer.LINK)


def _long_envelope(env: Envelopes) -> bytes:
    pad = "x" * ENVELOPE_OVER_BYTES
    return orjson.dumps({"from": env.addr, "node": env.node, "route": "tree", "pad": pad})


def _sync_request_frames(sender: str, n_shards: int) -> list[bytes]:
    shards = np.arange(n_shards, dtype=np.int64)
    return [bytes(f) for f in encode(SyncRequest(sender, tuple(shards), (0,) * n_shards), None)]


# --- wrong message types and envelopes -------------------------------------------------------


def wrong_types(env: Envelopes, genuine: Sequence[bytes], n_shards: int) -> list[Probe]:
    """Unknown types and protocol versions, a signed delta relabelled as a mesh type, and
    well-formed mesh messages a node must not act on."""
    header = orjson.loads(genuine[0])
    probes = [
        _relabelled("type.unknown", env, genuine, header, {"t": 99}),
        _relabelled("type.zero", env, genuine, header, {"t": 0}),
        _relabelled("type.bool", env, genuine, header, {"t": True}),
        _relabelled("type.string", env, genuine, header, {"t": "1"}),
        _relabelled("type.protocol", env, genuine, header, {"p": PROTOCOL_VERSION + 1}),
        _relabelled("type.as_snapshot", env, genuine, header, {"t": int(MsgType.SHARD_SNAPSHOT)}),
        _relabelled("type.as_rollback", env, genuine, header, {"t": int(MsgType.ROLLBACK)}),
        _probe(
            "type.signed_digest",
            env.of("mesh"),
            _with(_digest(env, n_shards), 1, genuine[1]),
            Layer.CODEC,
        ),
    ]
    return probes + _bad_membership(env) + _unverifiable_snapshots(env, n_shards)


def _relabelled(
    kind: str,
    env: Envelopes,
    genuine: Sequence[bytes],
    header: dict[str, Any],
    change: dict[str, Any],
) -> Probe:
    frames = _with(genuine, 0, orjson.dumps({**header, **change}))
    return _probe(kind, env.of("tree"), frames, Layer.CODEC)


def _bad_membership(env: Envelopes) -> list[Probe]:
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("nonsense", {}),
        ("ping", {}),
        ("ping", {"seq": -1}),
        ("ack", {"seq": "x"}),
    ]
    return [
        _probe(
            "type.membership", env.of("mesh"), encode(MembershipEnvelope(k, b), None), Layer.CODEC
        )
        for k, b in bodies
    ]


def _unverifiable_snapshots(env: Envelopes, n_shards: int) -> list[Probe]:
    """Unsolicited snapshots no signed ``Validated`` vouches for (one for a shard that does not
    exist), at a version far ahead so that none passes as a late duplicate."""
    ahead = (1 << 62) | 7
    snapshots = [ShardSnapshot(0, ahead, b"\x00" * 64), ShardSnapshot(n_shards + 5, ahead, b"x")]
    return [
        _probe("type.snapshot", env.of("repair"), encode(s, None), Layer.REPLICA) for s in snapshots
    ]


def _digest(
    env: Envelopes, n_shards: int, vector: VersionVector | None = None, epoch: int = 1
) -> list[bytes]:
    vector = vector if vector is not None else VersionVector.zeros(n_shards)
    zeros, watermark = np.zeros(len(vector), np.uint64), VersionVector.zeros(len(vector))
    digest = SyncDigest(env.node, epoch, bytes(ROOT_BYTES), vector, zeros, watermark, True)
    return [bytes(f) for f in encode(digest, None)]


def requests(env: Envelopes, n_shards: int) -> list[Probe]:
    """Requests a node answers or ignores: catch-up for shards that do not exist, control."""
    missing = SyncRequest(env.node, (n_shards, n_shards + 1), (0, 0))
    control = ControlRequest(env.node, 0)
    return [
        _probe("request.no_such_shard", env.of("mesh"), encode(missing, None), Layer.HARMLESS),
        _probe("request.control", env.of("mesh"), encode(control, None), Layer.HARMLESS),
    ]


def bad_envelopes(env: Envelopes, genuine: Sequence[bytes], victim: str) -> list[Probe]:
    """Envelopes that lie (another node's id) or are malformed."""
    routes = [
        orjson.dumps({"from": env.addr, "node": env.node, "route": "broadcast"}),
        orjson.dumps({"from": "nowhere", "node": env.node, "route": "tree"}),
        orjson.dumps({"from": env.addr, "route": "tree"}),
        orjson.dumps([env.addr, env.node, "tree"]),
    ]
    probes = [Probe("envelope.malformed", (e, *genuine), Layer.TRANSPORT) for e in routes]
    probes.append(Probe("envelope.spoofed", (env.of("tree", victim), *genuine), Layer.SPOOFED))
    return probes


def lying_digests(env: Envelopes, vector: Sequence[int], epoch: int) -> list[Probe]:
    """Anti-entropy digests (unsigned: an allow-listed key may lie in them) claiming a vector of
    another shard count (refused), and one far ahead of ``vector``: a node believes that one
    until the named peer's next digest (it pulls in vain and reports lag meanwhile) but must
    neither fail nor take anything unsigned."""
    n = len(vector)
    ahead = VersionVector(np.asarray(vector, np.int64) + 1000)
    probes = []
    # The lie ahead first: refused lies must not replace it (kept, the short one broke pulls).
    lies = [
        (ahead, Layer.HARMLESS),
        (VersionVector.zeros(n + 3), Layer.REPLICA),
        (VersionVector.zeros(1), Layer.REPLICA),
    ]
    for lie, layer in lies:
        frames = _digest(env, len(lie), lie, epoch)
        probes.append(_probe("digest.lie", env.of("mesh"), frames, layer))
    return probes


def membership_lies(env: Envelopes, victim: tuple[str, str, str]) -> list[Probe]:
    """SWIM gossip (unsigned: any allow-listed key may say anything about anyone): ``victim``
    (node id, address, datacenter) declared dead at the highest incarnation, and a member that
    does not exist declared alive. Peers take the first as about the victim's known life, which
    it refutes (the member table bounds incarnations), and refuse the ghost: no allow-listed
    key names it (membership counter ``refused``), so it never takes a place in a tree."""
    node_id, addr, dc = victim
    dead = MemberRecord(node_id, addr, dc, INCARNATION_MAX, MemberState.DEAD, env.node)
    ghost = MemberRecord(GHOST_ID, GHOST_ADDR, dc, 0, MemberState.ALIVE, GHOST_ID)
    probes = []
    for kind, record in (("membership.evict", dead), ("membership.ghost", ghost)):
        name, body = to_body(Gossip(env.node, [record]))
        frames = encode(MembershipEnvelope(name, body), None)
        probes.append(_probe(kind, env.of("mesh"), frames, Layer.HARMLESS))
    return probes
