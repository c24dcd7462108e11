"""Wire codec: round trips, zero copy, signatures, limits, and hostile input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from p2prec.core.versions import EPOCH_MAX, VersionVector, pack
from p2prec.wire import codec
from p2prec.wire.codec import WireMessage, decode, encode, frames_digest
from p2prec.wire.errors import RemoteProtocolError
from p2prec.wire.limits import WireLimits
from p2prec.wire.messages import (
    Message,
    MsgType,
    ParamDelta,
    Rollback,
    TableRows,
    Validated,
)
from p2prec.wire.signing import Signer

SIGNER = Signer.from_bytes(bytes(range(32)))
VERIFIER = SIGNER.verifier()
OTHER = Signer.from_bytes(bytes(range(1, 33)))

Mutator = Callable[[dict[str, Any], list[bytes]], None]


# --- sample messages -----------------------------------------------------------------------------


def make_delta(rng: np.random.Generator, n: int = 3, dim: int = 4) -> ParamDelta:
    v1, v2 = pack(1, 5), pack(1, 6)
    u = TableRows(
        keys=rng.integers(-(2**62), 2**62, n),
        versions=np.full(n, v2, dtype=np.int64),
        rows=rng.standard_normal((n, dim), dtype=np.float32),
    )
    v = TableRows(
        keys=rng.integers(0, 1000, n + 1),
        versions=np.full(n + 1, v2, dtype=np.int64),
        rows=rng.standard_normal((n + 1, 2)).astype(np.float16),
    )
    dense = {"w": rng.standard_normal((2, 2), dtype=np.float32)}
    return ParamDelta((1, 5), (v1, v1), (v2, v2), {"u": u, "v": v}, dense, created_ms=123)


def make_validated(rng: np.random.Generator) -> Validated:
    vector = VersionVector(rng.integers(0, 2**50, 4))
    return Validated(vector, epoch=2, created_ms=7, shard_digests=rng.bytes(32 * 4))


def make_rollback(rng: np.random.Generator) -> Rollback:
    return Rollback(VersionVector(rng.integers(0, 2**50, 4)), new_epoch=3, created_ms=9)


FACTORIES: dict[str, Callable[[np.random.Generator], Message]] = {
    "delta": make_delta,
    "validated": make_validated,
    "rollback": make_rollback,
}


def message_arrays(msg: WireMessage) -> list[npt.NDArray[Any]]:
    """The numpy arrays a message holds (a decoded message's are views of the frames)."""
    if isinstance(msg, ParamDelta):
        out = [a for t in msg.tables.values() for a in (t.keys, t.versions, t.rows)]
        return out + list(msg.dense.values())
    if isinstance(msg, Validated):
        return [msg.vector.packed]
    if isinstance(msg, Rollback):
        return [msg.to.packed]
    return [v for f in dataclasses.fields(msg) if isinstance(v := getattr(msg, f.name), np.ndarray)]


def plain_fields(msg: WireMessage) -> dict[str, Any]:
    """The fields of a message other than arrays and delta tables, bytes-likes as bytes."""
    out = {}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, memoryview | bytes):
            out[f.name] = bytes(value)
        elif not isinstance(value, np.ndarray) and f.name not in ("tables", "dense"):
            out[f.name] = value
    return out


def assert_same(a: WireMessage, b: WireMessage) -> None:
    assert type(a) is type(b)
    assert plain_fields(a) == plain_fields(b)
    if isinstance(a, ParamDelta) and isinstance(b, ParamDelta):
        assert list(a.tables) == list(b.tables)
        assert list(a.dense) == list(b.dense)
    for x, y in zip(message_arrays(a), message_arrays(b), strict=True):
        assert x.shape == y.shape
        assert x.dtype.newbyteorder("=") == y.dtype.newbyteorder("=")
        np.testing.assert_array_equal(x, y)


def encoded(kind: str, seed: int = 0) -> list[bytes]:
    msg = FACTORIES[kind](np.random.default_rng(seed))
    return [bytes(f) for f in encode(msg, SIGNER)]


def resign(header: dict[str, Any] | bytes, buffers: list[bytes]) -> list[bytes]:
    """Frames with this header and buffers, validly signed: a hostile but keyed sender."""
    raw = header if isinstance(header, bytes) else orjson.dumps(header)
    digest = frames_digest(raw, [memoryview(b) for b in buffers])
    return [raw, SIGNER.sign(digest), *buffers]


def split_buffers(header: dict[str, Any], parts: list[bytes]) -> list[bytes]:
    """One buffer per descriptor, out of protocol-2 frames ``[packed, big0, ...]``."""
    sizes = [int(np.prod(shape)) * np.dtype(code).itemsize for code, shape in header["b"]]
    bigs, out, offset = iter(parts[1:]), [], 0
    for size in sizes:
        if size >= codec.PACK_BELOW_BYTES:
            out.append(next(bigs))
            continue
        offset += -offset % 8
        out.append(parts[0][offset : offset + size])
        offset += size
    return out


def pack_buffers(buffers: list[bytes]) -> list[bytes]:
    """Protocol-2 frames of these buffers, as ``encode`` lays them out."""
    return [bytes(part) for part in codec._packed_buffers([memoryview(b) for b in buffers])]


def expect_rejected(frames: Any, match: str | None = None, **kwargs: Any) -> None:
    kwargs.setdefault("verifier", VERIFIER)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decode(frames, **kwargs)
    assert "internal decoder error" not in str(info.value)


# --- round trips and zero copy -------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_round_trip(kind: str) -> None:
    msg = FACTORIES[kind](np.random.default_rng(1))
    frames = encode(msg, SIGNER)
    assert orjson.loads(frames[0])["t"] == int({"delta": 1, "validated": 2, "rollback": 3}[kind])
    out = decode(frames, VERIFIER)
    assert_same(msg, out)
    for arr in message_arrays(out):
        assert not arr.flags.writeable
    if kind == "delta":  # (a VersionVector keeps its own copy)
        for arr in message_arrays(out):
            assert any(np.shares_memory(arr, np.frombuffer(f, np.uint8)) for f in frames[2:])


def test_encode_sends_big_buffers_without_copy_and_packs_the_small() -> None:
    """Buffers of PACK_BELOW_BYTES or more are their own frames, views of the arrays; the
    small ones are copied into frame 2, each at an offset aligned to 8 bytes."""
    msg = make_delta(np.random.default_rng(2), n=1200, dim=16)  # u.rows: 76.8 KB
    frames = encode(msg, None)
    assert isinstance(frames[0], bytes)
    assert frames[1] == b""
    arrays = message_arrays(msg)
    big = [a for a in arrays if a.nbytes >= codec.PACK_BELOW_BYTES]
    assert [a.nbytes for a in big] == [1200 * 16 * 4] and len(frames) == 4
    assert np.shares_memory(big[0], np.frombuffer(frames[3], np.uint8))
    buffers = split_buffers(orjson.loads(frames[0]), [bytes(f) for f in frames[2:]])
    for arr in arrays:  # each small one at its 8-byte aligned place in frame 2
        assert arr.tobytes() in buffers
    assert_same(msg, decode(frames, None, trust_unsigned=True))


def test_a_packed_frame_with_nonzero_padding_is_refused_even_when_signed() -> None:
    """The bytes between the small buffers of the packed frame are zero: one encoding per
    message, whatever its sender (a signature covers the padding, not its canonical form)."""
    msg = make_delta(np.random.default_rng(2), n=2)  # table v's rows: 3 x 2 float16, 12 bytes
    frames = [bytes(f) for f in encode(msg, SIGNER)]
    header = orjson.loads(frames[0])
    pads: list[int] = []
    offset = 0
    for code, shape in header["b"]:  # every buffer of this delta is small: all in frame 2
        pads += range(offset, offset + -offset % 8)
        offset += -offset % 8 + int(np.prod(shape)) * np.dtype(code).itemsize
    assert len(frames) == 3 and pads and offset == len(frames[2])
    decode(resign(frames[0], frames[2:]), VERIFIER)  # re-signed as it was: accepted
    for pad in (pads[0], pads[-1]):
        padded = bytearray(frames[2])
        padded[pad] = 1
        expect_rejected(resign(frames[0], [bytes(padded)]), "padding bytes are not zero")


def test_encode_converts_strided_and_big_endian() -> None:
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((5, 8), dtype=np.float32)
    table = TableRows(
        keys=np.arange(5, dtype=">i8"),
        versions=np.arange(1, 6, dtype=np.int32),
        rows=wide[:, ::2],
    )
    dense = {"w": np.arange(6, dtype=">f4").reshape(2, 3)}
    msg = ParamDelta((0,), (0,), (1,), {"t": table}, dense)
    out = decode(encode(msg, SIGNER), VERIFIER)
    assert isinstance(out, ParamDelta)
    np.testing.assert_array_equal(out.tables["t"].rows, wide[:, ::2])
    np.testing.assert_array_equal(out.tables["t"].keys, np.arange(5))
    np.testing.assert_array_equal(out.dense["w"], np.arange(6).reshape(2, 3))
    assert out.tables["t"].rows.dtype.str == "<f4"
    assert out.tables["t"].versions.dtype.str == "<i8"


def test_decode_views_the_received_frames() -> None:
    big = make_delta(np.random.default_rng(1), n=1200, dim=16)  # u.rows in a frame of its own
    frames = [bytearray(f) for f in encode(big, SIGNER)]
    out = decode(frames, VERIFIER)
    assert isinstance(out, ParamDelta)
    rows = out.tables["u"].rows
    assert np.shares_memory(rows, np.frombuffer(frames[3], np.uint8))
    keys = out.tables["u"].keys  # packed with the other small buffers
    assert np.shares_memory(keys, np.frombuffer(frames[2], np.uint8))
    assert not rows.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        rows[0, 0] = 1.0
    np.frombuffer(frames[3], np.float32)[0] = 42.0  # the receiver owns the frame
    assert rows[0, 0] == 42.0


def test_decode_accepts_any_buffer() -> None:
    frames = encoded("validated")
    as_views = [memoryview(f) for f in frames]
    as_arrays = [np.frombuffer(f, np.uint8) for f in frames]
    halves = [np.frombuffer(f + f, np.uint8)[: len(f)].data for f in frames]
    for variant in (as_views, as_arrays, halves, tuple(frames)):
        assert_same(decode(variant, VERIFIER), decode(frames, VERIFIER))


def test_empty_delta_round_trips() -> None:
    msg = ParamDelta((), (), ())
    assert_same(msg, decode(encode(msg, SIGNER), VERIFIER))
    empty = TableRows(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 8), np.float16))
    msg = ParamDelta((3,), (0,), (1,), {"e": empty}, {"s": np.full((), 1.5, np.float32)})
    assert_same(msg, decode(encode(msg, SIGNER), VERIFIER))


# --- signatures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_tampering_is_detected(kind: str) -> None:
    frames = encoded(kind)
    for i in [0, *range(2, len(frames))]:
        for pos in (0, len(frames[i]) // 2, len(frames[i]) - 1):
            bad = list(frames)
            bad[i] = frames[i][:pos] + bytes([frames[i][pos] ^ 0x10]) + frames[i][pos + 1 :]
            expect_rejected(bad)
    expect_rejected(frames, "signature verification failed", verifier=OTHER.verifier())
    expect_rejected([frames[0], b"", *frames[2:]], "without a signature")
    other = encoded(kind, seed=5)
    expect_rejected([frames[0], other[1], *frames[2:]], "verification failed")


def test_shard_digests_are_signed() -> None:
    msg = make_validated(np.random.default_rng(4))
    frames = [bytes(f) for f in encode(msg, SIGNER)]
    header = orjson.loads(frames[0])
    assert header["b"] == [["<i8", [4]], ["|u1", [128]]]
    out = decode(frames, VERIFIER)
    assert isinstance(out, Validated)
    assert isinstance(out.shard_digests, bytes)
    assert out.shard_digests == msg.shard_digests
    packed = frames[2]  # the vector (4 x 8 bytes), then the digests
    assert packed[32:] == msg.shard_digests
    for pos in (0, 31, 32, 127):  # one flipped bit in any shard's digest
        bad = bytearray(packed)
        bad[32 + pos] ^= 0x01
        expect_rejected([*frames[:2], bytes(bad)], "signature verification failed")
    other = make_validated(np.random.default_rng(5)).shard_digests
    expect_rejected([*frames[:2], packed[:32] + other], "signature verification failed")
    swapped = packed[:32] + packed[64:] + packed[32:64]
    expect_rejected([*frames[:2], swapped], "verification failed")
    # Dropping the digests (with a matching descriptor) is tampering too.
    header["b"][1] = ["|u1", [0]]
    expect_rejected([orjson.dumps(header), frames[1], packed[:32]], "verification failed")


def test_validated_without_shard_digests() -> None:
    msg = Validated(VersionVector(np.arange(3)), epoch=1, created_ms=5)
    frames = encode(msg, SIGNER)
    assert orjson.loads(frames[0])["b"][1] == ["|u1", [0]]
    out = decode(frames, VERIFIER)
    assert_same(msg, out)
    assert isinstance(out, Validated) and out.shard_digests == b""
    view: Any = memoryview(bytes(range(96)))  # any bytes-like encodes
    with_digests = Validated(msg.vector, 1, 5, view)
    out = decode(encode(with_digests, SIGNER), VERIFIER)
    assert isinstance(out, Validated) and out.shard_digests == bytes(range(96))


def test_signed_types_need_a_verifier() -> None:
    frames = encoded("delta")
    expect_rejected(frames, "no verifier", verifier=None)
    unsigned = encode(make_delta(np.random.default_rng(0)), None)
    expect_rejected(unsigned, "no verifier", verifier=None)
    assert isinstance(decode(unsigned, None, trust_unsigned=True), ParamDelta)
    assert isinstance(decode(frames, None, trust_unsigned=True), ParamDelta)
    expect_rejected(unsigned, "without a signature", trust_unsigned=True)  # a verifier wins


def test_unsigned_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "SIGNED_TYPES", frozenset({MsgType.DELTA}))
    msg = make_validated(np.random.default_rng(0))
    frames = encode(msg, SIGNER)
    assert frames[1] == b""
    assert_same(msg, decode(frames, None))
    assert_same(msg, decode(frames, VERIFIER))
    signed = resign(bytes(frames[0]), [bytes(f) for f in frames[2:]])
    expect_rejected(signed, "unsigned but carries a signature")


# --- limits --------------------------------------------------------------------------------------


def test_limits() -> None:
    frames = encoded("delta")
    expect_rejected(frames, "frames", limits=WireLimits(max_frames=len(frames) - 1))
    expect_rejected(frames, "buffer over", limits=WireLimits(max_frame_bytes=16))
    expect_rejected(frames, "header of", limits=WireLimits(max_header_bytes=64))
    expect_rejected(frames, "message over", limits=WireLimits(max_message_bytes=256))
    expect_rejected(frames, "tables", limits=WireLimits(max_tables=1))
    expect_rejected(frames[:1])
    expect_rejected([*frames, *frames] * 20)
    expect_rejected(encoded("validated"), "over the limit", limits=WireLimits(max_vector_len=3))
    expect_rejected(encoded("rollback"), "over the limit", limits=WireLimits(max_vector_len=3))
    delta = ParamDelta(tuple(range(5)), (0,) * 5, (1,) * 5)
    big = encode(delta, SIGNER)
    expect_rejected(big, "over the limit", limits=WireLimits(max_vector_len=4))
    with pytest.raises(ValueError, match="max_frames"):
        WireLimits(max_frames=0)
    with pytest.raises(ValueError, match="max_tables"):
        WireLimits(max_tables=True)


def test_dense_limit() -> None:
    rng = np.random.default_rng(0)
    dense = {f"d{i}": rng.standard_normal(3).astype(np.float32) for i in range(3)}
    frames = encode(ParamDelta((0,), (0,), (1,), {}, dense), SIGNER)
    expect_rejected(frames, "dense", limits=WireLimits(max_dense=2))


def test_not_frames() -> None:
    frames = encoded("delta")
    expect_rejected([frames[0], frames[1], 7, *frames[3:]], "not a contiguous byte buffer")
    expect_rejected([frames[0], frames[1], None, *frames[3:]], "not a contiguous byte buffer")
    expect_rejected([frames[0], frames[1], "text", *frames[3:]], "not a contiguous byte buffer")
    strided = np.zeros(16, np.uint8)[::2]
    expect_rejected([frames[0], frames[1], strided, *frames[3:]], "contiguous")
    expect_rejected(iter(frames), "sequence")
    expect_rejected(b"".join(frames))


# --- hostile headers and buffers (validly signed) ------------------------------------------------

DELETE = object()


def setp(*path_and_value: Any) -> Mutator:
    """Set (or delete) the header value at a key/index path."""
    *path, value = path_and_value

    def mutate(header: dict[str, Any], buffers: list[bytes]) -> None:
        node: Any = header
        for step in path[:-1]:
            node = node[step]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return mutate


def setbuf(i: int, values: Any, dtype: str = "<i8") -> Mutator:
    """Replace buffer ``i`` and its descriptor consistently."""
    arr = np.asarray(values, dtype=dtype)

    def mutate(header: dict[str, Any], buffers: list[bytes]) -> None:
        buffers[i] = arr.tobytes()
        header["b"][i] = [arr.dtype.str, list(arr.shape)]

    return mutate


def add_buffer(header: dict[str, Any], buffers: list[bytes]) -> None:
    buffers.append(bytes(8))
    header["b"].append(["<i8", [1]])


def drop_buffer(header: dict[str, Any], buffers: list[bytes]) -> None:
    buffers.pop()
    header["b"].pop()


# Delta buffers: 0 shards, 1 bases, 2 versions, 3-5 table u, 6-8 table v, 9 dense w.
HOSTILE: list[tuple[str, Mutator, str]] = [
    ("delta", setp("p", 3), "protocol version"),
    ("delta", setp("p", True), "protocol version"),
    ("delta", setp("p", DELETE), "protocol version"),
    ("delta", setp("t", 99), "message type"),
    ("delta", setp("t", True), "message type"),
    ("delta", setp("t", 1.0), "message type"),
    ("delta", setp("created_ms", -1), "created_ms"),
    ("delta", setp("created_ms", 1.5), "created_ms"),
    ("delta", setp("created_ms", True), "created_ms"),
    ("delta", setp("created_ms", "5"), "created_ms"),
    ("delta", setp("created_ms", 2**63), "created_ms"),
    ("delta", setp("created_ms", DELETE), "created_ms"),
    ("delta", setp("tables", "uv"), "tables"),
    ("delta", setp("tables", ["u", "u"]), "duplicate"),
    ("delta", setp("tables", ["", "v"]), "bad name"),
    ("delta", setp("tables", ["x" * 65, "v"]), "bad name"),
    ("delta", setp("tables", [1, "v"]), "bad name"),
    ("delta", setp("dense", None), "dense"),
    ("delta", setp("tables", ["u"]), "buffers where"),
    ("delta", add_buffer, "buffers where"),
    ("delta", setp("b", None), "descriptors"),
    ("delta", setp("b", 0, None), "malformed descriptor"),
    ("delta", setp("b", 0, ["<i8"]), "malformed descriptor"),
    ("delta", setp("b", 0, 0, 8), "malformed descriptor"),
    ("delta", setp("b", 0, 0, "<f8"), "not allowed"),
    ("delta", setp("b", 0, 0, ">i8"), "not allowed"),
    ("delta", setp("b", 0, 1, 2), "malformed shape"),
    ("delta", setp("b", 0, 1, [True, True]), "malformed shape"),
    ("delta", setp("b", 0, 1, [-2]), "malformed shape"),
    ("delta", setp("b", 0, 1, [2.0]), "malformed shape"),
    ("delta", setp("b", 0, 1, [1] * 9), "malformed shape"),
    ("delta", setp("b", 0, 1, [3]), "do not match"),
    ("delta", setp("b", 0, 1, [1, 2]), "not allowed here"),
    ("delta", setp("b", 0, 1, [0, 2**25, 2**25]), "too large"),
    ("delta", setp("b", 0, 1, [0, 2**40]), "malformed shape"),
    ("delta", setbuf(0, [5, 1]), "rise strictly"),
    ("delta", setbuf(0, [1, 1]), "rise strictly"),
    ("delta", setbuf(0, [-1, 5]), "rise strictly"),
    ("delta", setbuf(0, [1, 2**31]), "rise strictly"),
    ("delta", setbuf(0, [1.0, 5.0], "<f4"), "not allowed here"),
    ("delta", setbuf(0, [1, 5], "<u8"), "not allowed here"),
    ("delta", setbuf(0, [1, 5], "|u1"), "not allowed here"),
    ("delta", setbuf(1, [-1, 3]), "base"),
    ("delta", setbuf(2, [0, pack(1, 6)]), "base"),
    ("delta", setbuf(2, [pack(1, 5), pack(1, 6)]), "base"),
    ("delta", setbuf(1, [0, 3, 5]), "not allowed here"),
    ("delta", setbuf(3, [1.0, 2.0, 3.0], "<f4"), "keys"),
    ("delta", setbuf(4, [1, -1, 1]), "negative"),
    ("delta", setbuf(4, [1, 1]), "u.versions"),
    ("delta", setbuf(5, np.zeros(12), "<f4"), "u.rows"),
    ("delta", setbuf(5, np.zeros((3, 0)), "<f4"), "dim"),
    ("delta", setbuf(5, np.zeros((2, 4)), "<f4"), "u.rows"),
    ("delta", setbuf(5, np.zeros((3, 4)), "<i8"), "u.rows"),
    ("delta", setbuf(5, np.zeros((3, 4)), "|u1"), "u.rows"),
    ("delta", setbuf(9, np.zeros((2, 2)), "<i8"), "dense w"),
    ("validated", setp("epoch", -1), "epoch"),
    ("validated", setp("epoch", EPOCH_MAX + 1), "epoch"),
    ("validated", setp("epoch", False), "epoch"),
    ("validated", setp("t", 3), "new_epoch"),
    ("validated", setbuf(0, [-1, 2]), "negative"),
    ("validated", setbuf(0, [[1, 2]]), "vector"),
    ("validated", setbuf(0, [1.0], "<f4"), "vector"),
    ("validated", add_buffer, "buffers where"),
    ("validated", drop_buffer, "buffers where"),
    ("validated", setbuf(1, np.zeros(31), "|u1"), "shard_digests"),
    ("validated", setbuf(1, np.zeros(32 * 5), "|u1"), "shard_digests"),
    ("validated", setbuf(1, np.zeros(32 * 3), "|u1"), "shard_digests"),
    ("validated", setbuf(1, np.zeros((4, 32)), "|u1"), "shard_digests"),
    ("validated", setbuf(1, np.zeros(16), "<i8"), "shard_digests"),
    ("validated", setbuf(1, np.zeros(16), "<u8"), "shard_digests"),
    ("validated", setp("b", 1, 0, "<u8"), "do not match"),
    ("rollback", setp("new_epoch", "1"), "new_epoch"),
    ("rollback", setp("created_ms", None), "created_ms"),
    ("rollback", setp("t", 1), "created_ms|tables"),
    ("rollback", setbuf(0, [-5]), "negative"),
]


@pytest.mark.parametrize(("kind", "mutate", "match"), HOSTILE)
def test_hostile_but_signed(kind: str, mutate: Mutator, match: str) -> None:
    frames = encoded(kind)
    header = orjson.loads(frames[0])
    buffers = split_buffers(header, frames[2:])
    mutate(header, buffers)
    expect_rejected(resign(header, pack_buffers(buffers)), match)


@pytest.mark.parametrize(
    ("raw", "match"),
    [(b"{", "not JSON"), (b"[1]", "not a JSON object"), (b"null", "not a JSON object"),
     (b"", "not JSON"), (b"\xff\xfe", "not JSON"), (b'{"p":1e999}', "not JSON"),
     (b"[" * 2000 + b"]" * 2000, "JSON")],
    ids=["open", "array", "null", "empty", "utf8", "inf", "deep"],
)  # fmt: skip
def test_bad_header_json(raw: bytes, match: str) -> None:
    expect_rejected(resign(raw, []), match)


# --- encode-side errors (local bugs, not peer input) ---------------------------------------------


def test_encode_rejects_malformed_messages() -> None:
    rows = np.zeros((2, 3), np.float32)
    keys = np.arange(2)
    with pytest.raises(ValueError, match="equal length"):
        encode(ParamDelta((1, 2), (0,), (1, 1)), None)
    with pytest.raises(ValueError, match="float32 or float16"):
        encode(ParamDelta((1,), (0,), (1,), {"t": TableRows(keys, keys, rows.astype("f8"))}), None)
    with pytest.raises(ValueError, match="integer"):
        encode(ParamDelta((1,), (0,), (1,), {"t": TableRows(keys.astype("u8"), keys, rows)}), None)
    with pytest.raises(ValueError, match="rows"):
        encode(ParamDelta((1,), (0,), (1,), {"t": TableRows(keys[:1], keys[:1], rows)}), None)
    with pytest.raises(ValueError, match="names"):
        encode(ParamDelta((1,), (0,), (1,), {}, {"": rows}), None)
    with pytest.raises(ValueError, match="created_ms"):
        encode(ParamDelta((1,), (0,), (1,), created_ms=-1), None)
    with pytest.raises(ValueError, match="epoch"):
        encode(Validated(VersionVector.zeros(2), epoch=EPOCH_MAX + 1), None)
    with pytest.raises(ValueError, match="shard_digests"):
        encode(Validated(VersionVector.zeros(2), epoch=1, shard_digests=bytes(32)), None)
    strided: Any = memoryview(bytes(128))[::2]
    with pytest.raises(ValueError, match="shard_digests"):
        encode(Validated(VersionVector.zeros(2), epoch=1, shard_digests=strided), None)
    with pytest.raises(TypeError, match="not a message"):
        encode("hello", None)  # type: ignore[arg-type]


# --- fuzz ----------------------------------------------------------------------------------------

JUNK: list[Any] = [-1, 0, 1, 2, 5, 8, 2**31, 2**63 - 1, -(2**63), 1.5, True, False, None, "", "x",
                   "<f4", "<u8", "|u1", "0" * 32, "A" * 32, [], [0], [[]], {}, {"a": 1}, "y" * 65,
                   "z" * 129, [1, 2, 3]]  # fmt: skip


def mutate_raw(rng: np.random.Generator, frames: list[bytes]) -> list[bytes]:
    out = list(frames)
    i = int(rng.integers(len(out)))
    kind = int(rng.integers(5))
    if kind == 0:
        out[i] = out[i][: int(rng.integers(len(out[i]) + 1))]
    elif kind == 1:
        del out[i]
    elif kind == 2:
        out.insert(int(rng.integers(len(out) + 1)), out[i])
    elif kind == 3 and out[i]:
        buf = bytearray(out[i])
        for pos in rng.integers(len(buf), size=int(rng.integers(1, 5))):
            buf[pos] ^= 1 << int(rng.integers(8))
        out[i] = bytes(buf)
    else:
        j = int(rng.integers(len(out)))
        out[i], out[j] = out[j], out[i]
    return out


def mutate_header(rng: np.random.Generator, frames: list[bytes]) -> list[bytes]:
    """Replace one value anywhere in the header with junk, then sign it validly (unsigned
    types stay unsigned)."""
    header = orjson.loads(frames[0])
    node: Any = header
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = keys[int(rng.integers(len(keys)))]
        child = node[key]
        if not isinstance(child, dict | list) or not child or rng.random() < 0.4:
            break
        node = child
    node[key] = JUNK[int(rng.integers(len(JUNK)))]
    if not frames[1]:
        return [orjson.dumps(header), b"", *frames[2:]]
    return resign(header, list(frames[2:]))


def fuzz_once(rng: np.random.Generator, frames: list[bytes], mode: int) -> None:
    """Mode 0: raw mutation, verified; 1: raw mutation, trusted; 2: hostile header, signed."""
    bad = mutate_header(rng, frames) if mode == 2 else mutate_raw(rng, frames)
    verifier = VERIFIER if mode != 1 else None
    error = ""
    try:
        out = decode(bad, verifier, trust_unsigned=mode == 1)
    except RemoteProtocolError as exc:
        error = str(exc) or "?"
    assert "internal decoder error" not in error
    if error:
        return
    signed = bool(frames[1])
    # Only an unmodified message may pass a signature check over raw mutations.
    assert mode != 0 or not signed or bad == frames
    # Whatever decodes is a well-formed message: it encodes and decodes again to the same.
    assert_same(out, decode(encode(out, SIGNER), VERIFIER))


def test_fuzz_only_remote_protocol_errors() -> None:
    rng = np.random.default_rng(20240611)
    samples = [encoded(kind, seed) for kind in sorted(FACTORIES) for seed in range(3)]
    samples.append([bytes(f) for f in encode(ParamDelta((), (), ()), SIGNER)])
    for n in range(12_000):
        frames = samples[n % len(samples)]
        fuzz_once(rng, frames, mode=n % 3)
    for frames in samples:  # the originals still decode
        decode(frames, VERIFIER)


# --- properties ----------------------------------------------------------------------------------


@st.composite
def deltas(draw: st.DrawFn) -> ParamDelta:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shards = sorted(draw(st.sets(st.integers(0, 2**31 - 1), max_size=6)))
    bases = [draw(st.integers(0, 2**62)) for _ in shards]
    versions = [b + draw(st.integers(1, 2**40)) for b in bases]
    tables = {}
    for name in draw(st.lists(st.text(min_size=1, max_size=64), max_size=3, unique=True)):
        n, dim = draw(st.integers(0, 20)), draw(st.integers(1, 9))
        dtype = draw(st.sampled_from(["<f4", "<f2", ">f4"]))
        keys = rng.integers(-(2**63), 2**63 - 1, n, endpoint=True)
        tables[name] = TableRows(
            keys, rng.integers(0, 2**62, n), rng.random((n, dim)).astype(dtype)
        )
    dense = {}
    for name in draw(st.lists(st.text(min_size=1, max_size=64), max_size=3, unique=True)):
        shape = draw(st.lists(st.integers(0, 4), max_size=4))
        dense[name] = rng.standard_normal(shape).astype(draw(st.sampled_from(["<f4", "<f2"])))
    created_ms = draw(st.integers(0, 2**63 - 1))
    return ParamDelta(tuple(shards), tuple(bases), tuple(versions), tables, dense, created_ms)


@settings(max_examples=150, deadline=None)
@given(deltas())
def test_delta_round_trip_property(msg: ParamDelta) -> None:
    out = decode(encode(msg, SIGNER), VERIFIER)
    assert_same(msg, out)
    assert all(not a.flags.writeable for a in message_arrays(out))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 2**63 - 1), max_size=40),
    st.integers(0, EPOCH_MAX),
    st.integers(0, 2**63 - 1),
    st.sampled_from(["rollback", "validated", "digests"]),
    st.binary(min_size=32, max_size=32),
)
def test_vector_messages_round_trip_property(
    packed: list[int], epoch: int, created_ms: int, kind: str, digest: bytes
) -> None:
    vector = VersionVector(np.array(packed, dtype=np.int64))
    digests = digest * len(packed) if kind == "digests" else b""
    msg: Message = (
        Rollback(vector, epoch, created_ms)
        if kind == "rollback"
        else Validated(vector, epoch, created_ms, digests)
    )
    assert_same(msg, decode(encode(msg, SIGNER), VERIFIER))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3 * codec.PACK_BELOW_BYTES), max_size=6), st.integers(0, 300))
def test_frames_digest_hashes_the_defined_byte_stream(sizes: list[int], header_size: int) -> None:
    """What is hashed: the domain, the buffer count, then each frame's length and bytes
    (signatures of logged deltas depend on it)."""
    rng = np.random.default_rng(len(sizes) * 1000 + header_size)
    header = rng.bytes(header_size)
    buffers = [memoryview(rng.bytes(n)) for n in sizes]
    stream = codec.SIG_DOMAIN + len(buffers).to_bytes(8, "little")
    for part in (header, *buffers):
        stream += len(part).to_bytes(8, "little") + bytes(part)
    assert frames_digest(header, buffers) == blake3(stream).digest()


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_protocol_1_frames_still_decode(kind: str) -> None:
    """Logs written before protocol 2 hold every buffer in its own frame: they replay."""
    frames = encoded(kind)
    header = orjson.loads(frames[0])
    buffers = split_buffers(header, frames[2:])
    header["p"] = 1
    old = resign(header, buffers)
    assert len(old) == 2 + len(header["b"])
    assert_same(decode(old, VERIFIER), decode(frames, VERIFIER))
    if len(buffers) > 1:  # packed frames under p=1: fewer frames than descriptors
        expect_rejected(resign(header, pack_buffers(buffers)), "buffer")
