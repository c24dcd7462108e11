"""Wire codec, mesh messages: round trips, zero copy, no signatures, limits, hostile input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import (
    DELETE,
    SIGNER,
    VERIFIER,
    Mutator,
    add_buffer,
    assert_same,
    drop_buffer,
    expect_rejected,
    fuzz_once,
    pack_buffers,
    resign,
    setbuf,
    setp,
    split_buffers,
)

from p2prec.core.versions import EPOCH_MAX, VersionVector, pack
from p2prec.wire.codec import MAX_JSON_DEPTH, PACK_BELOW_BYTES, WireMessage, decode, encode
from p2prec.wire.limits import WireLimits
from p2prec.wire.messages import (
    SIGNED_TYPES,
    ControlRequest,
    MembershipEnvelope,
    MsgType,
    ShardSnapshot,
    SyncDigest,
    SyncRequest,
)

# --- sample messages -----------------------------------------------------------------------------


def make_sync_digest(rng: np.random.Generator, n: int = 5) -> SyncDigest:
    vector = rng.integers(0, 2**50, n)
    return SyncDigest(
        sender="node-a.dc1",
        epoch=3,
        root=rng.bytes(16),
        vector=VersionVector(vector),
        digests=rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False),
        watermark=VersionVector(vector // 2),
        is_reply=True,
    )


def make_sync_request(rng: np.random.Generator) -> SyncRequest:
    shards = np.sort(rng.choice(1000, 4, replace=False))
    since = rng.integers(0, 2**50, 4)
    return SyncRequest("node-b", tuple(shards.tolist()), tuple(since.tolist()), snapshot_only=True)


def make_shard_snapshot(rng: np.random.Generator) -> ShardSnapshot:
    return ShardSnapshot(shard=7, version=pack(2, 40), data=rng.bytes(301))


def make_control_request(rng: np.random.Generator) -> ControlRequest:
    return ControlRequest("node-c", epoch=int(rng.integers(0, EPOCH_MAX)))


def make_membership(rng: np.random.Generator) -> MembershipEnvelope:
    body = {
        "seq": int(rng.integers(0, 2**40)),
        "from": "node-d",
        "members": [{"id": "node-e", "inc": 2, "state": "alive", "load": 0.25}, {"id": "f"}],
        "suspect": None,
        "direct": False,
    }
    return MembershipEnvelope("ping", body)


MESH_FACTORIES: dict[str, Callable[[np.random.Generator], WireMessage]] = {
    "sync_digest": make_sync_digest,
    "sync_request": make_sync_request,
    "shard_snapshot": make_shard_snapshot,
    "control_request": make_control_request,
    "membership": make_membership,
}
TYPES = {
    "sync_digest": MsgType.SYNC_DIGEST,
    "sync_request": MsgType.SYNC_REQUEST,
    "shard_snapshot": MsgType.SHARD_SNAPSHOT,
    "control_request": MsgType.CONTROL_REQUEST,
    "membership": MsgType.MEMBERSHIP,
}


def encoded(kind: str, seed: int = 0) -> list[bytes]:
    msg = MESH_FACTORIES[kind](np.random.default_rng(seed))
    return [bytes(f) for f in encode(msg, SIGNER)]


def shares(arr: Any, frames: list[Any]) -> bool:
    return any(np.shares_memory(np.frombuffer(arr, np.uint8), np.frombuffer(f, np.uint8))
               for f in frames)  # fmt: skip


# --- round trips and zero copy -------------------------------------------------------------------


def test_every_type_has_a_sample() -> None:
    assert set(TYPES.values()) == set(MsgType) - SIGNED_TYPES


@pytest.mark.parametrize("kind", sorted(MESH_FACTORIES))
def test_round_trip(kind: str) -> None:
    msg = MESH_FACTORIES[kind](np.random.default_rng(1))
    frames = encode(msg, SIGNER)
    assert orjson.loads(frames[0])["t"] == int(TYPES[kind])
    assert frames[1] == b""  # mesh messages are never signed, even with a signer at hand
    for verifier in (None, VERIFIER):
        assert_same(msg, decode(frames, verifier))


def test_sync_digest_header_and_zero_copy() -> None:
    msg = make_sync_digest(np.random.default_rng(2))
    frames = [bytearray(f) for f in encode(msg, None)]
    header = orjson.loads(frames[0])
    assert header["root"] == msg.root.hex()
    assert header["is_reply"] is True
    assert header["b"] == [["<i8", [5]], ["<i8", [5]], ["<u8", [5]]]
    out = decode(frames, None)
    assert isinstance(out, SyncDigest)
    assert out.root == msg.root and isinstance(out.root, bytes)
    assert out.digests.dtype == np.uint64
    assert not out.digests.flags.writeable
    # Three small buffers packed in frame 2: vector at 0, watermark at 40, digests at 80.
    assert np.shares_memory(out.digests, np.frombuffer(frames[2], np.uint8))
    with pytest.raises(ValueError, match="read-only"):
        out.digests[0] = 1
    np.frombuffer(frames[2], np.uint64)[10] = 42  # the receiver owns the frame
    assert out.digests[0] == 42


def big_snapshot(rng: np.random.Generator) -> ShardSnapshot:
    return ShardSnapshot(shard=7, version=pack(2, 40), data=rng.bytes(PACK_BELOW_BYTES))


def test_encode_is_zero_copy_for_big_buffers() -> None:
    snap = big_snapshot(np.random.default_rng(3))
    frames = encode(snap, None)
    assert len(frames) == 4 and frames[2] == b"" and shares(snap.data, frames[3:])
    digest = make_sync_digest(np.random.default_rng(3))  # small: copied into frame 2
    assert not shares(digest.digests, encode(digest, None)[2:])


def test_shard_snapshot_is_a_read_only_view() -> None:
    frames = [bytearray(f) for f in encoded("shard_snapshot")]
    out = decode(frames, None)
    assert isinstance(out, ShardSnapshot)
    assert isinstance(out.data, memoryview)
    assert out.data.readonly and out.data.format == "B" and out.data.ndim == 1
    assert shares(out.data, [frames[2]])
    with pytest.raises(TypeError):
        out.data[0] = 1
    assert bytes(out.data) == bytes(frames[2])
    # A decoded big snapshot is forwarded as is (a relay re-encodes the view without a copy).
    big = [bytearray(f) for f in encode(big_snapshot(np.random.default_rng(4)), None)]
    received = decode(big, None)
    assert isinstance(received, ShardSnapshot)
    assert shares(encode(received, None)[3], [big[3]])


def test_empty_mesh_messages() -> None:
    empty = VersionVector.zeros(0)
    digest = SyncDigest("n", 0, bytes(16), empty, np.zeros(0, np.uint64), empty)
    samples: list[WireMessage] = [
        digest,
        SyncRequest("n", (), ()),
        ShardSnapshot(0, 0, b""),
        MembershipEnvelope("k", {}),
    ]
    for msg in samples:
        assert_same(msg, decode(encode(msg, None), None))
    # Narrower unsigned digests widen to uint64 (np.asarray(()) is float64: taken as empty).
    for digests in (np.array([], np.uint32), ()):
        narrow = SyncDigest("n", 0, bytes(16), empty, digests, empty)  # type: ignore[arg-type]
        assert_same(digest, decode(encode(narrow, None), None))
    two = VersionVector([1, 2])
    out = decode(
        encode(SyncDigest("n", 0, bytes(16), two, np.array([3, 4], np.uint16), two), None), None
    )
    assert isinstance(out, SyncDigest)
    assert out.digests.dtype == np.uint64 and out.digests.tolist() == [3, 4]


def test_sync_request_bounds() -> None:
    top = (1 << 31) - 1
    msg = SyncRequest("n", (0, top), (0, 2**63 - 1))
    assert_same(msg, decode(encode(msg, None), None))
    msg = SyncRequest("n", np.arange(3), np.zeros(3, np.int32))  # type: ignore[arg-type]
    out = decode(encode(msg, None), None)
    assert isinstance(out, SyncRequest)
    assert out.shards == (0, 1, 2) and out.since == (0, 0, 0)
    assert all(type(v) is int for v in out.shards + out.since)


def test_membership_body_round_trips() -> None:
    body: dict[str, Any] = {
        "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
        "floats": [0.0, -1.5, 1e300, 5e-324],
        "text": ["", "ü∂ß", "\x00", '"'],
        "flags": [True, False, None],
        "nested": {"a": {"b": [[[]]], "c": {}}},
    }
    body["deep"] = nested(MAX_JSON_DEPTH - 1)  # the body itself is one level
    out = decode(encode(MembershipEnvelope("x" * 64, body), None), None)
    assert isinstance(out, MembershipEnvelope)
    assert (out.kind, out.body) == ("x" * 64, body)


# --- signatures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MESH_FACTORIES))
def test_mesh_types_refuse_a_signature(kind: str) -> None:
    frames = encoded(kind)
    signed = resign(frames[0], frames[2:])
    expect_rejected(signed, "unsigned but carries a signature")
    expect_rejected(signed, "unsigned but carries a signature", verifier=None)


# --- limits --------------------------------------------------------------------------------------


def test_limits() -> None:
    expect_rejected(encoded("sync_digest"), "over the limit", limits=WireLimits(max_vector_len=4))
    expect_rejected(encoded("sync_request"), "over the limit", limits=WireLimits(max_vector_len=3))
    snap = encoded("shard_snapshot")  # 301 bytes of data
    expect_rejected(snap, "buffer over", limits=WireLimits(max_frame_bytes=300))
    assert decode(snap, None, WireLimits(max_frame_bytes=301))
    big = MembershipEnvelope("push_pull", {"members": ["m" * 100] * 100})
    frames = encode(big, None)
    expect_rejected(frames, "header of", limits=WireLimits(max_header_bytes=10_000))
    assert decode(frames, None, WireLimits(max_header_bytes=11_000))


# --- hostile input -------------------------------------------------------------------------------

ROOT = "ab" * 16


def nested(depth: int) -> Any:
    """``depth`` lists, one inside the other."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# Buffers: sync_digest 0 vector, 1 watermark, 2 digests; sync_request 0 shards, 1 since;
# shard_snapshot 0 data.
HOSTILE: list[tuple[str, Mutator, str]] = [
    ("sync_digest", setp("sender", ""), "sender"),
    ("sync_digest", setp("sender", "s" * 129), "sender"),
    ("sync_digest", setp("sender", 5), "sender"),
    ("sync_digest", setp("sender", DELETE), "sender"),
    ("sync_digest", setp("epoch", -1), "epoch"),
    ("sync_digest", setp("epoch", EPOCH_MAX + 1), "epoch"),
    ("sync_digest", setp("epoch", True), "epoch"),
    ("sync_digest", setp("root", ROOT[:-2]), "root"),
    ("sync_digest", setp("root", ROOT + "ab"), "root"),
    ("sync_digest", setp("root", ROOT.upper()), "root"),
    ("sync_digest", setp("root", " " + ROOT[1:]), "root"),
    ("sync_digest", setp("root", "zz" + ROOT[2:]), "root"),
    ("sync_digest", setp("root", "٠" * 32), "root"),  # a unicode digit is not hex
    ("sync_digest", setp("root", list(range(16))), "root"),
    ("sync_digest", setp("root", DELETE), "root"),
    ("sync_digest", setp("is_reply", 1), "is_reply"),
    ("sync_digest", setp("is_reply", "true"), "is_reply"),
    ("sync_digest", setp("is_reply", None), "is_reply"),
    ("sync_digest", setp("is_reply", DELETE), "is_reply"),
    ("sync_digest", add_buffer, "buffers where"),
    ("sync_digest", drop_buffer, "buffers where"),
    ("sync_digest", setbuf(0, [1, 2, 3, 4, -1]), "negative"),
    ("sync_digest", setbuf(1, [1, 2, 3, 4, -1]), "negative"),
    ("sync_digest", setbuf(0, [1, 2, 3, 4]), "watermark"),
    ("sync_digest", setbuf(1, [1, 2, 3, 4, 5, 6]), "watermark"),
    ("sync_digest", setbuf(2, [1, 2, 3, 4], "<u8"), "digests"),
    ("sync_digest", setbuf(2, [1, 2, 3, 4, 5], "<i8"), "digests"),
    ("sync_digest", setbuf(2, np.zeros(40), "|u1"), "digests"),
    ("sync_digest", setbuf(2, np.zeros((5, 1)), "<u8"), "digests"),
    ("sync_digest", setbuf(0, np.zeros(5), "<u8"), "vector"),
    ("sync_digest", setbuf(1, np.zeros(5), "<f4"), "watermark"),
    ("sync_request", setp("sender", ["a"]), "sender"),
    ("sync_request", setp("snapshot_only", 0), "snapshot_only"),
    ("sync_request", setp("snapshot_only", DELETE), "snapshot_only"),
    ("sync_request", setbuf(0, [5, 1, 6, 7]), "rise strictly"),
    ("sync_request", setbuf(0, [1, 1, 6, 7]), "rise strictly"),
    ("sync_request", setbuf(0, [-1, 1, 6, 7]), "rise strictly"),
    ("sync_request", setbuf(0, [1, 2, 6, 2**31]), "rise strictly"),
    ("sync_request", setbuf(0, [1, 2, 3]), "since"),
    ("sync_request", setbuf(0, [1, 2, 3, 4], "<u8"), "shards"),
    ("sync_request", setbuf(0, [[1, 2, 3, 4]]), "shards"),
    ("sync_request", setbuf(1, [0, 0, 0, -1]), "negative"),
    ("sync_request", setbuf(1, [0, 0, 0, 0, 0]), "since"),
    ("sync_request", setbuf(1, [0.0, 0.0, 0.0, 0.0], "<f4"), "since"),
    ("sync_request", drop_buffer, "buffers where"),
    ("shard_snapshot", setp("shard", -1), "shard"),
    ("shard_snapshot", setp("shard", 2**31), "shard"),
    ("shard_snapshot", setp("shard", 1.0), "shard"),
    ("shard_snapshot", setp("version", -1), "version"),
    ("shard_snapshot", setp("version", 2**63), "version"),
    ("shard_snapshot", setp("version", False), "version"),
    ("shard_snapshot", setbuf(0, np.zeros(4), "<i8"), "data"),
    ("shard_snapshot", setbuf(0, np.zeros((2, 2)), "|u1"), "data"),
    ("shard_snapshot", setbuf(0, np.zeros(()), "|u1"), "data"),
    ("shard_snapshot", add_buffer, "buffers where"),
    ("shard_snapshot", drop_buffer, "buffers where"),
    ("shard_snapshot", setp("b", 0, 0, "|b1"), "not allowed"),
    ("shard_snapshot", setp("b", 0, 0, "<u1"), "not allowed"),
    ("control_request", setp("sender", None), "sender"),
    ("control_request", setp("epoch", "3"), "epoch"),
    ("control_request", setp("epoch", DELETE), "epoch"),
    ("control_request", add_buffer, "buffers where"),
    ("membership", setp("kind", ""), "kind"),
    ("membership", setp("kind", "k" * 65), "kind"),
    ("membership", setp("kind", 1), "kind"),
    ("membership", setp("kind", DELETE), "kind"),
    ("membership", setp("body", []), "body"),
    ("membership", setp("body", None), "body"),
    ("membership", setp("body", "{}"), "body"),
    ("membership", setp("body", DELETE), "body"),
    ("membership", setp("body", "members", 0, {"x": nested(MAX_JSON_DEPTH)}), "deeper"),
    ("membership", add_buffer, "buffers where"),
    ("membership", setp("t", int(MsgType.CONTROL_REQUEST)), "sender"),
    ("control_request", setp("t", int(MsgType.SYNC_DIGEST)), "root"),
    ("sync_request", setp("t", int(MsgType.DELTA)), "without a signature"),
    ("sync_request", setp("t", 9), "message type"),
]


@pytest.mark.parametrize(("kind", "mutate", "match"), HOSTILE)
def test_hostile(kind: str, mutate: Mutator, match: str) -> None:
    frames = encoded(kind)
    header = orjson.loads(frames[0])
    buffers = split_buffers(header, frames[2:])
    mutate(header, buffers)
    expect_rejected([orjson.dumps(header), b"", *pack_buffers(buffers)], match)


def test_deep_membership_body_is_refused() -> None:
    # orjson parses this (but would not encode it): no encoder of ours could have sent it.
    header = b'{"p":1,"t":%d,"kind":"k","b":[],"body":{"d":%s%s}}' % (
        MsgType.MEMBERSHIP,
        b"[" * 500,
        b"]" * 500,
    )
    expect_rejected([header, b""], "deeper")
    deep = nested(200)
    with pytest.raises(ValueError, match="deeper"):
        encode(MembershipEnvelope("k", {"d": deep}), None)


# --- encode-side errors (local bugs, not peer input) ---------------------------------------------


def bad_digest(**changes: Any) -> SyncDigest:
    fields = vars(make_sync_digest(np.random.default_rng(0))) | changes
    return SyncDigest(**fields)


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (bad_digest(root=bytes(15)), "root"),
        (bad_digest(root=memoryview(bytes(32))[::2]), "root"),
        (bad_digest(digests=np.arange(5)), "unsigned"),
        (bad_digest(digests=np.arange(4, dtype=np.uint64)), "equal length"),
        (bad_digest(watermark=VersionVector.zeros(4)), "equal length"),
        (bad_digest(sender=""), "sender"),
        (bad_digest(sender="s" * 129), "sender"),
        (bad_digest(epoch=EPOCH_MAX + 1), "epoch"),
        (bad_digest(is_reply=1), "is_reply"),
        (SyncRequest("n", (1, 2), (0,)), "equal length"),
        (SyncRequest("n", (1,), (0,), snapshot_only=None), "snapshot_only"),  # type: ignore[arg-type]
        (SyncRequest("n", (1.5,), (0,)), "integer"),  # type: ignore[arg-type]
        (ShardSnapshot(-1, 0, b""), "shard"),
        (ShardSnapshot(2**31, 0, b""), "shard"),
        (ShardSnapshot(0, -1, b""), "version"),
        (ShardSnapshot(0, 0, memoryview(bytes(8))[::2]), "data"),
        (ShardSnapshot(0, 0, "text"), "data"),  # type: ignore[arg-type]
        (ControlRequest("", 1), "sender"),
        (ControlRequest("n", -1), "epoch"),
        (MembershipEnvelope("", {}), "kind"),
        (MembershipEnvelope("k" * 65, {}), "kind"),
        (MembershipEnvelope("k", []), "dict"),  # type: ignore[arg-type]
        (MembershipEnvelope("k", {"a": (1, 2)}), "tuple"),
        (MembershipEnvelope("k", {"a": {1, 2}}), "set"),
        (MembershipEnvelope("k", {"a": b"x"}), "bytes"),
        (MembershipEnvelope("k", {"a": np.float64(1.0)}), "float64"),
        (MembershipEnvelope("k", {"a": np.int64(1)}), "int64"),
        (MembershipEnvelope("k", {"a": float("nan")}), "non-finite"),
        (MembershipEnvelope("k", {"a": [float("inf")]}), "non-finite"),
        (MembershipEnvelope("k", {"a": 2**64}), "64 bits"),
        (MembershipEnvelope("k", {"a": -(2**63) - 1}), "64 bits"),
        (MembershipEnvelope("k", {"a": {1: 2}}), "not a string"),
    ],
)
def test_encode_rejects_malformed_messages(msg: WireMessage, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode(msg, None)


# --- fuzz ----------------------------------------------------------------------------------------


def test_fuzz_only_remote_protocol_errors() -> None:
    rng = np.random.default_rng(20240612)
    samples = [encoded(kind, seed) for kind in sorted(MESH_FACTORIES) for seed in range(2)]
    empty = VersionVector.zeros(0)
    for msg in (
        SyncDigest("n", 0, bytes(16), empty, np.zeros(0, np.uint64), empty),
        SyncRequest("n", (), ()),
        ShardSnapshot(0, 0, b""),
        MembershipEnvelope("k", {}),
    ):
        samples.append([bytes(f) for f in encode(msg, None)])
    for n in range(20_000):
        fuzz_once(rng, samples[n % len(samples)], mode=n % 3)
    for frames in samples:  # the originals still decode
        decode(frames, None)


# --- properties ----------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=64), st.dictionaries(st.text(max_size=16), JSON, max_size=5))
def test_membership_round_trip_property(kind: str, body: dict[str, Any]) -> None:
    out = decode(encode(MembershipEnvelope(kind, body), None), None)
    assert isinstance(out, MembershipEnvelope)
    assert (out.kind, out.body) == (kind, body)


@settings(max_examples=100, deadline=None)
@given(
    st.text(min_size=1, max_size=128),
    st.lists(st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**64 - 1)), max_size=30),
    st.integers(0, EPOCH_MAX),
    st.binary(min_size=16, max_size=16),
    st.sets(st.integers(0, 2**31 - 1), max_size=30),
    st.booleans(),
)
def test_sync_round_trip_property(
    sender: str,
    shards: list[tuple[int, int]],
    epoch: int,
    root: bytes,
    wanted: set[int],
    flag: bool,
) -> None:
    vector = VersionVector([v for v, _ in shards])
    digests = np.array([d for _, d in shards], dtype=np.uint64)
    watermark = VersionVector(vector.packed // 3)
    digest = SyncDigest(sender, epoch, root, vector, digests, watermark, flag)
    chosen = tuple(sorted(wanted))
    request = SyncRequest(sender, chosen, tuple(s * 7 for s in chosen), flag)
    for msg in (digest, request, ControlRequest(sender, epoch)):
        assert_same(msg, decode(encode(msg, None), None))
