"""Messages <-> frames: an orjson header, a signature, raw numpy buffers (DESIGN.md section 4).

Frames are ``[header, signature, packed, big0, big1, ...]`` (protocol 2):

- ``header``: orjson bytes of a JSON object ``{"p": PROTOCOL_VERSION, "t": MsgType, <scalar
  fields and names>, "b": [[dtype, shape], ...]}``; ``b`` describes each buffer in order, with
  ``dtype`` one of ``"<i8"``, ``"<f4"``, ``"<f2"``, ``"<u8"``, ``"|u1"`` (each field allows only
  its own);
- ``signature``: 64-byte Ed25519 signature of ``frames_digest(header, buffers)`` for the types in
  ``SIGNED_TYPES``, empty for the others;
- buffers: C-contiguous little-endian array bytes. Those of ``PACK_BELOW_BYTES`` or more travel
  in their own frames, in order, sent without copying (memoryviews of the arrays); the smaller
  ones are copied, in order, into the one ``packed`` frame, each at an offset rounded up to a
  multiple of 8 (zero bytes between). The descriptors alone say which buffer lies where. Both
  decode without copying (read-only ``np.frombuffer`` views of the frames). A delta of 1,000
  rows with its dense tensors is 4 frames instead of 13: every frame costs a receiver ~2 us in
  pyzmq and a CURVE box in libzmq, on every hop (measured: 0.43-0.51 against 0.36-0.37 ms of
  CPU per 256 KiB message, sender and receiver together).
- Protocol 1 (still decoded: logs written before 2) had every buffer in its own frame:
  ``[header, signature, buf0, buf1, ...]``.

Per type (integer arrays travel as buffers, not as JSON lists, so that a vector of 64k shards
stays a 512 KiB buffer instead of a megabyte of JSON to parse):

- DELTA: ``created_ms``, ``tables`` (names), ``dense`` (names); buffers ``shards``, ``bases``,
  ``versions`` (``<i8`` ``(m,)``), then per table ``keys`` ``<i8 (n,)``, ``versions`` ``<i8
  (n,)``, ``rows`` ``<f4|<f2 (n, dim)``, then one ``<f4|<f2`` buffer per dense tensor;
- VALIDATED: ``epoch``, ``created_ms``; buffers ``vector`` ``<i8 (S,)`` (packed versions),
  ``shard_digests`` ``|u1 (32 * S,)`` or ``|u1 (0,)`` (signed with the rest);
- ROLLBACK: ``new_epoch``, ``created_ms``; buffer ``to`` ``<i8 (S,)`` (packed versions).

Mesh types (unsigned: empty signature frame; the transport authenticates the hop):

- SYNC_DIGEST: ``sender``, ``epoch``, ``root`` (32 lowercase hex digits: the 16-byte Merkle
  root), ``is_reply``; buffers ``vector`` ``<i8 (S,)``, ``watermark`` ``<i8 (S,)``, ``digests``
  ``<u8 (S,)``;
- SYNC_REQUEST: ``sender``, ``snapshot_only``; buffers ``shards`` ``<i8 (m,)`` (strictly
  increasing), ``since`` ``<i8 (m,)`` (packed versions);
- SHARD_SNAPSHOT: ``shard``, ``version``; buffer ``data`` ``|u1 (n,)`` (decoded as a read-only
  memoryview of the frame);
- CONTROL_REQUEST: ``sender``, ``epoch``; no buffers;
- MEMBERSHIP: ``kind`` (1..64 chars), ``body`` (a JSON object, bounded by the header limit); no
  buffers.

``decode`` raises ``RemoteProtocolError`` and nothing else for any bad input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeGuard

import numpy as np
import numpy.typing as npt
import orjson
from blake3 import blake3

from p2prec.core.versions import EPOCH_MAX, VersionVector
from p2prec.wire.errors import RemoteProtocolError
from p2prec.wire.limits import DEFAULT_LIMITS, WireLimits
from p2prec.wire.messages import (
    PROTOCOL_VERSION,
    READABLE_PROTOCOL_VERSIONS,
    SIGNED_TYPES,
    ControlRequest,
    MembershipEnvelope,
    MeshMessage,
    Message,
    MsgType,
    ParamDelta,
    Rollback,
    ShardSnapshot,
    SyncDigest,
    SyncRequest,
    TableRows,
    Validated,
)
from p2prec.wire.signing import SIGNATURE_BYTES, Signer, Verifier

#: Domain separation: a digest of these frames can never be mistaken for another signed thing.
SIG_DOMAIN = b"p2prec/wire/frames/v1\x00"
MAX_NAME_CHARS = 64
MAX_SENDER_CHARS = 128
#: Deepest nesting of lists and objects in a membership body.
MAX_JSON_DEPTH = 32
ROOT_BYTES = 16
DIGEST_BYTES = 32
MAX_NDIM = 8
SHARD_LIMIT = 1 << 31
INT64_MAX = (1 << 63) - 1
#: Digests of messages at least this large hash on all cores (BLAKE3 is tree-parallel).
THREADED_DIGEST_BYTES = 1 << 20
#: Buffers smaller than this travel copied into the one packed frame (8-byte aligned).
PACK_BELOW_BYTES = 64 << 10
_PACK_ALIGN = 8

#: Anything with the buffer protocol: bytes, bytearray, memoryview, numpy arrays, zmq.Frame.
FrameLike: TypeAlias = object
#: Everything ``encode`` takes and ``decode`` returns.
WireMessage: TypeAlias = Message | MeshMessage
Frames: TypeAlias = list[bytes | memoryview]
Header: TypeAlias = dict[str, Any]
Array: TypeAlias = npt.NDArray[Any]

_DTYPES = {code: np.dtype(code) for code in ("<i8", "<f4", "<f2", "<u8", "|u1")}
_INT = ("<i8",)
_FLOAT = ("<f4", "<f2")
_U64 = ("<u8",)
_BYTES = ("|u1",)
_HEX = frozenset("0123456789abcdef")


# --- public API -----------------------------------------------------------------------------


def encode(msg: WireMessage, signer: Signer | None) -> Frames:
    """Frames of ``msg``; the buffers are memoryviews of its arrays (copied only when they are
    not C-contiguous little-endian). Signed types are signed when ``signer`` is given; without
    one they go out with an empty signature frame, which only ``trust_unsigned`` decoding (local
    persistence, tests) accepts. Raises ``ValueError``/``TypeError`` for a malformed message.

    The frames alias the message's arrays: do not modify them until the send has completed
    (zmq ``copy=False`` sends later, from these very buffers; a change would also void the
    signature)."""
    mt = _TYPE_OF.get(type(msg))
    if mt is None:
        raise TypeError(f"not a message: {type(msg).__name__}")
    fields, arrays = _CODECS[mt].encode(msg)
    descs = [[a.dtype.str, list(a.shape)] for a in arrays]
    header = orjson.dumps({"p": PROTOCOL_VERSION, "t": int(mt), **fields, "b": descs})
    buffers = _packed_buffers([a.reshape(-1).view(np.uint8).data for a in arrays])
    signature = b""
    if signer is not None and mt in SIGNED_TYPES:
        signature = signer.sign(frames_digest(header, buffers))
    return [header, signature, *buffers]


def _packed_buffers(buffers: list[memoryview]) -> list[bytes | memoryview]:
    """``[packed, big0, big1, ...]``: the small buffers copied into one, the big ones as
    they are (see the module docstring)."""
    packed = bytearray()
    bigs: list[bytes | memoryview] = []
    for buffer in buffers:
        if buffer.nbytes >= PACK_BELOW_BYTES:
            bigs.append(buffer)
            continue
        packed += bytes(-len(packed) % _PACK_ALIGN)
        packed += buffer
    return [bytes(packed), *bigs]


def decode(
    frames: Sequence[FrameLike],
    verifier: Verifier | None,
    limits: WireLimits = DEFAULT_LIMITS,
    *,
    trust_unsigned: bool = False,
) -> WireMessage:
    """The message in ``frames``, its arrays read-only views of the frames (no copy).

    A type in ``SIGNED_TYPES`` must carry a valid signature of ``verifier``'s key. With
    ``verifier=None`` such a type is refused unless ``trust_unsigned=True`` (trusted local
    input only: persistence, tests), which skips the signature check. Any bad input raises
    ``RemoteProtocolError`` and nothing else.
    """
    try:
        return _decode(frames, verifier, limits, trust_unsigned)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # defence in depth: peer input must never crash a node
        raise RemoteProtocolError(f"internal decoder error: {type(exc).__name__}: {exc}") from exc


def frames_digest(header: bytes | memoryview, buffers: Sequence[bytes | memoryview]) -> bytes:
    """BLAKE3 of the domain, the buffer count and every frame, each prefixed with its length."""
    total = memoryview(header).nbytes + sum(memoryview(b).nbytes for b in buffers)
    threads = blake3.AUTO if total >= THREADED_DIGEST_BYTES else 1
    h = blake3(SIG_DOMAIN, max_threads=threads)
    h.update(len(buffers).to_bytes(8, "little"))
    for part in (header, *buffers):
        h.update(memoryview(part).nbytes.to_bytes(8, "little"))
        h.update(part)
    return h.digest()


# --- decoding: frames, header, signature, buffers ---------------------------------------------


def _decode(
    frames: Sequence[FrameLike], verifier: Verifier | None, limits: WireLimits, trust: bool
) -> WireMessage:
    views = _frame_views(frames, limits)
    header = _parse_header(views[0])
    mt = _msg_type(header)
    _authenticate(mt, views, verifier, trust)
    arrays = _arrays(header, views[2:], limits)
    return _CODECS[mt].decode(header, arrays, limits)


def _frame_views(frames: Sequence[FrameLike], limits: WireLimits) -> list[memoryview]:
    if not isinstance(frames, Sequence):
        raise RemoteProtocolError(f"frames must be a sequence, got {type(frames).__name__}")
    if not 2 <= len(frames) <= limits.max_frames:
        raise RemoteProtocolError(f"{len(frames)} frames, expected 2..{limits.max_frames}")
    views = [_byte_view(f) for f in frames]
    if views[0].nbytes > limits.max_header_bytes:
        raise RemoteProtocolError(f"header of {views[0].nbytes} bytes over the limit")
    if views[1].nbytes not in (0, SIGNATURE_BYTES):
        raise RemoteProtocolError(f"signature frame of {views[1].nbytes} bytes")
    if any(v.nbytes > limits.max_frame_bytes for v in views[2:]):
        raise RemoteProtocolError(f"buffer over {limits.max_frame_bytes} bytes")
    if sum(v.nbytes for v in views) > limits.max_message_bytes:
        raise RemoteProtocolError(f"message over {limits.max_message_bytes} bytes")
    return views


def _byte_view(frame: FrameLike) -> memoryview:
    """A flat byte view of one frame, without copying."""
    try:
        view = memoryview(frame)  # type: ignore[arg-type]
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")  # raises unless C-contiguous
    except (TypeError, ValueError, BufferError) as exc:
        raise RemoteProtocolError(f"frame is not a contiguous byte buffer: {exc}") from exc
    if not view.c_contiguous:
        raise RemoteProtocolError("frame is not a contiguous byte buffer")
    return view


def _parse_header(view: memoryview) -> Header:
    try:
        header = orjson.loads(view)
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise RemoteProtocolError("header is not a JSON object")
    return header


def _msg_type(header: Header) -> MsgType:
    version = header.get("p")
    if not _is_int(version) or version not in READABLE_PROTOCOL_VERSIONS:
        raise RemoteProtocolError(f"unknown protocol version {version!r}")
    t = header.get("t")
    if not _is_int(t) or t not in _CODECS:
        raise RemoteProtocolError(f"unknown message type {t!r}")
    return MsgType(t)


def _authenticate(
    mt: MsgType, views: list[memoryview], verifier: Verifier | None, trust: bool
) -> None:
    signature = views[1]
    if mt not in SIGNED_TYPES:
        if signature.nbytes:
            raise RemoteProtocolError(f"{mt.name} is unsigned but carries a signature")
        return
    if verifier is None:
        if trust:
            return
        raise RemoteProtocolError(f"{mt.name} must be signed and no verifier was given")
    if signature.nbytes != SIGNATURE_BYTES:
        raise RemoteProtocolError(f"{mt.name} without a signature")
    if not verifier.verify(frames_digest(views[0], views[2:]), bytes(signature)):
        raise RemoteProtocolError(f"{mt.name} signature verification failed")


def _arrays(header: Header, views: list[memoryview], limits: WireLimits) -> list[Array]:
    descs = header.get("b")
    if not isinstance(descs, list) or len(descs) > limits.max_frames:
        raise RemoteProtocolError("malformed buffer descriptors")
    layout = [_descriptor(i, d, limits) for i, d in enumerate(descs)]
    if header.get("p") == 1:
        if len(layout) != len(views):
            raise RemoteProtocolError(f"{len(layout)} buffer descriptors for {len(views)} buffers")
        placed = views
    else:
        placed = _unpacked(layout, views)
    return [
        _array(i, *desc, view) for i, (desc, view) in enumerate(zip(layout, placed, strict=True))
    ]


def _unpacked(
    layout: list[tuple[np.dtype[Any], tuple[int, ...], int]], views: list[memoryview]
) -> list[memoryview]:
    """Each buffer's bytes: a slice of the packed frame, or the next frame of its own."""
    if not views:
        raise RemoteProtocolError("no packed frame")
    packed, bigs = views[0], iter(views[1:])
    placed = []
    offset = 0
    for _dtype, _shape, nbytes in layout:
        if nbytes >= PACK_BELOW_BYTES:
            big = next(bigs, None)
            if big is None:
                raise RemoteProtocolError("frames and descriptors do not match: too few frames")
            placed.append(big)
            continue
        pad = -offset % _PACK_ALIGN
        if pad and any(packed[offset : offset + pad]):  # one encoding per message
            raise RemoteProtocolError("packed frame: padding bytes are not zero")
        offset += pad
        if offset + nbytes > packed.nbytes:
            raise RemoteProtocolError("packed frame and descriptors do not match: too short")
        placed.append(packed[offset : offset + nbytes])
        offset += nbytes
    if offset != packed.nbytes or next(bigs, None) is not None:
        raise RemoteProtocolError("frames and descriptors do not match: bytes left over")
    return placed


def _descriptor(
    i: int, desc: object, limits: WireLimits
) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """The dtype, shape and byte size buffer ``i``'s descriptor declares."""
    if not (isinstance(desc, list) and len(desc) == 2 and isinstance(desc[0], str)):
        raise RemoteProtocolError(f"buffer {i}: malformed descriptor")
    code, shape = desc
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise RemoteProtocolError(f"buffer {i}: dtype {code!r} not allowed")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM):
        raise RemoteProtocolError(f"buffer {i}: malformed shape")
    if not all(_is_int(d) and 0 <= d <= limits.max_frame_bytes for d in shape):
        raise RemoteProtocolError(f"buffer {i}: malformed shape {shape!r}")
    if math.prod(max(d, 1) for d in shape) > limits.max_frame_bytes:
        raise RemoteProtocolError(f"buffer {i}: shape {shape!r} too large")
    return dtype, tuple(shape), math.prod(shape) * dtype.itemsize


def _array(
    i: int, dtype: np.dtype[Any], shape: tuple[int, ...], nbytes: int, view: memoryview
) -> Array:
    """A read-only view of buffer ``i`` with the dtype and shape its descriptor declares."""
    if nbytes != view.nbytes:
        raise RemoteProtocolError(f"buffer {i}: {view.nbytes} bytes do not match {shape} {dtype}")
    arr = np.frombuffer(view, dtype=dtype).reshape(shape)
    arr.flags.writeable = False
    return arr


# --- field checks ------------------------------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int  # not bool, not float


def _int_field(header: Header, key: str, lo: int, hi: int) -> int:
    value = header.get(key)
    if not _is_int(value) or not lo <= value <= hi:
        raise RemoteProtocolError(f"{key} must be an int in {lo}..{hi}, got {value!r}")
    return int(value)


def _bool_field(header: Header, key: str) -> bool:
    value = header.get(key)
    if type(value) is not bool:
        raise RemoteProtocolError(f"{key} must be a bool, got {value!r}")
    return value


def _str_field(header: Header, key: str, max_chars: int) -> str:
    value = header.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise RemoteProtocolError(f"{key} must be a string of 1..{max_chars} chars")
    return value


def _names(header: Header, key: str, max_count: int) -> list[str]:
    names = header.get(key)
    if not isinstance(names, list) or len(names) > max_count:
        raise RemoteProtocolError(f"{key} must be a list of at most {max_count} names")
    for name in names:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise RemoteProtocolError(f"{key}: bad name {name!r}")
    if len(set(names)) != len(names):
        raise RemoteProtocolError(f"{key}: duplicate names")
    return names


def _expect(arr: Array, what: str, dtypes: tuple[str, ...], ndim: int, n: int = -1) -> None:
    if arr.dtype.str not in dtypes or arr.ndim != ndim or (n >= 0 and arr.shape[0] != n):
        raise RemoteProtocolError(f"{what}: {arr.dtype.str} {arr.shape} not allowed here")


def _expect_count(arrays: list[Array], n: int) -> None:
    if len(arrays) != n:
        raise RemoteProtocolError(f"{len(arrays)} buffers where the header implies {n}")


def _shard_ids(arr: Array, what: str, limits: WireLimits) -> int:
    """Check a buffer of shard ids (strictly increasing, within range); their count."""
    _expect(arr, what, _INT, 1)
    m = int(arr.shape[0])
    if m > limits.max_vector_len:
        raise RemoteProtocolError(f"{what}: {m} shards, over the limit")
    if m and (arr[0] < 0 or arr[-1] >= SHARD_LIMIT or np.any(arr[1:] <= arr[:-1])):
        raise RemoteProtocolError(f"{what} must rise strictly within 0..{SHARD_LIMIT - 1}")
    return m


def _vector(arr: Array, what: str, limits: WireLimits) -> VersionVector:
    _expect(arr, what, _INT, 1)
    if arr.shape[0] > limits.max_vector_len:
        raise RemoteProtocolError(f"{what}: {arr.shape[0]} shards over the limit")
    if arr.size and int(arr.min()) < 0:
        raise RemoteProtocolError(f"{what}: negative packed version")
    return VersionVector(arr)


# --- per-type codecs -------------------------------------------------------------------------


def _int_array(value: npt.ArrayLike, what: str) -> Array:
    arr = np.asarray(value)
    if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray(()) is float64
        arr = arr.astype(np.int64)
    if not (arr.dtype.kind == "i" or (arr.dtype.kind == "u" and arr.dtype.itemsize < 8)):
        raise ValueError(f"{what}: integer array expected, got {arr.dtype}")
    return np.asarray(arr, dtype=_DTYPES["<i8"], order="C")


def _float_array(value: npt.ArrayLike, what: str) -> Array:
    arr = np.asarray(value)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (2, 4):
        raise ValueError(f"{what}: float32 or float16 array expected, got {arr.dtype}")
    if arr.ndim > MAX_NDIM:
        raise ValueError(f"{what}: more than {MAX_NDIM} dimensions")
    return np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")


def _u64_array(value: npt.ArrayLike, what: str) -> Array:
    arr = np.asarray(value)
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.uint64)
    if arr.dtype.kind != "u":
        raise ValueError(f"{what}: unsigned integer array expected, got {arr.dtype}")
    return np.asarray(arr, dtype=_DTYPES["<u8"], order="C")


def _byte_array(value: object, what: str) -> Array:
    """A flat uint8 view of a bytes-like object, without copying."""
    try:
        view = memoryview(value)  # type: ignore[arg-type]
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")  # raises unless C-contiguous
    except (TypeError, ValueError, BufferError) as exc:
        raise ValueError(f"{what}: contiguous bytes expected: {exc}") from exc
    if not view.c_contiguous:
        raise ValueError(f"{what}: contiguous bytes expected")
    return np.frombuffer(view, dtype=np.uint8)


def _out_bool(value: bool, what: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{what} must be a bool, got {value!r}")
    return bool(value)


def _out_str(value: str, what: str, max_chars: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise ValueError(f"{what} must be a string of 1..{max_chars} chars, got {value!r}")
    return value


def _out_int(value: int, what: str, hi: int = INT64_MAX) -> int:
    value = int(value)
    if not 0 <= value <= hi:
        raise ValueError(f"{what} must be in 0..{hi}, got {value}")
    return value


def _check_names(names: list[str], what: str) -> list[str]:
    for name in names:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise ValueError(f"{what}: names must be 1..{MAX_NAME_CHARS} chars, got {name!r}")
    return names


def _encode_table(name: str, table: TableRows) -> list[Array]:
    keys = _int_array(table.keys, f"{name}.keys")
    versions = _int_array(table.versions, f"{name}.versions")
    rows = _float_array(table.rows, f"{name}.rows")
    n = keys.shape[0]
    if keys.ndim != 1 or versions.shape != (n,) or rows.ndim != 2 or rows.shape[0] != n:
        raise ValueError(f"{name}: keys (n,), versions (n,), rows (n, dim) expected")
    if rows.shape[1] < 1:
        raise ValueError(f"{name}: rows need dim >= 1")
    return [keys, versions, rows]


def _encode_delta(msg: ParamDelta) -> tuple[Header, list[Array]]:
    steps = [_int_array(getattr(msg, f), f) for f in ("shards", "bases", "versions")]
    if any(s.ndim != 1 or s.shape != steps[0].shape for s in steps):
        raise ValueError("shards, bases and versions must be flat and of equal length")
    arrays = list(steps)
    for name, table in msg.tables.items():
        arrays += _encode_table(name, table)
    arrays += [_float_array(d, f"dense {name}") for name, d in msg.dense.items()]
    fields: Header = {
        "created_ms": _out_int(msg.created_ms, "created_ms"),
        "tables": _check_names(list(msg.tables), "tables"),
        "dense": _check_names(list(msg.dense), "dense"),
    }
    return fields, arrays


def _decode_delta(header: Header, arrays: list[Array], limits: WireLimits) -> ParamDelta:
    created_ms = _int_field(header, "created_ms", 0, INT64_MAX)
    tables = _names(header, "tables", limits.max_tables)
    dense = _names(header, "dense", limits.max_dense)
    _expect_count(arrays, 3 + 3 * len(tables) + len(dense))
    shards, bases, versions = _steps(arrays[0], arrays[1], arrays[2], limits)
    rows = {name: _table(name, *arrays[3 + 3 * i : 6 + 3 * i]) for i, name in enumerate(tables)}
    tensors = arrays[3 + 3 * len(tables) :]
    for name, tensor in zip(dense, tensors, strict=True):
        _expect(tensor, f"dense {name}", _FLOAT, tensor.ndim)
    return ParamDelta(
        shards, bases, versions, rows, dict(zip(dense, tensors, strict=True)), created_ms
    )


def _steps(
    shards: Array, bases: Array, versions: Array, limits: WireLimits
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    m = _shard_ids(shards, "shards", limits)
    _expect(bases, "bases", _INT, 1, m)
    _expect(versions, "versions", _INT, 1, m)
    if m and (bases.min() < 0 or np.any(versions <= bases)):
        raise RemoteProtocolError("bases must be >= 0 and every version above its base")
    return tuple(shards.tolist()), tuple(bases.tolist()), tuple(versions.tolist())


def _table(name: str, keys: Array, versions: Array, rows: Array) -> TableRows:
    _expect(keys, f"{name}.keys", _INT, 1)
    n = keys.shape[0]
    _expect(versions, f"{name}.versions", _INT, 1, n)
    _expect(rows, f"{name}.rows", _FLOAT, 2, n)
    if rows.shape[1] < 1:
        raise RemoteProtocolError(f"{name}.rows: dim must be >= 1")
    if n and versions.min() < 0:
        raise RemoteProtocolError(f"{name}.versions: negative packed version")
    return TableRows(keys, versions, rows)


def _encode_validated(msg: Validated) -> tuple[Header, list[Array]]:
    fields: Header = {
        "epoch": _out_int(msg.epoch, "epoch", EPOCH_MAX),
        "created_ms": _out_int(msg.created_ms, "created_ms"),
    }
    digests = _byte_array(msg.shard_digests, "shard_digests")
    if digests.size not in (0, DIGEST_BYTES * len(msg.vector)):
        raise ValueError(f"shard_digests: {digests.size} bytes for {len(msg.vector)} shards")
    return fields, [_int_array(msg.vector.packed, "vector"), digests]


def _decode_validated(header: Header, arrays: list[Array], limits: WireLimits) -> Validated:
    epoch = _int_field(header, "epoch", 0, EPOCH_MAX)
    created_ms = _int_field(header, "created_ms", 0, INT64_MAX)
    _expect_count(arrays, 2)
    vector = _vector(arrays[0], "vector", limits)
    _expect(arrays[1], "shard_digests", _BYTES, 1)
    if arrays[1].size not in (0, DIGEST_BYTES * len(vector)):
        raise RemoteProtocolError(f"shard_digests: {arrays[1].size} bytes for {len(vector)} shards")
    # A copy (32 bytes a shard, one message per validation): immutable, hashable, comparable.
    return Validated(vector, epoch, created_ms, arrays[1].tobytes())


def _encode_rollback(msg: Rollback) -> tuple[Header, list[Array]]:
    fields: Header = {
        "new_epoch": _out_int(msg.new_epoch, "new_epoch", EPOCH_MAX),
        "created_ms": _out_int(msg.created_ms, "created_ms"),
    }
    return fields, [_int_array(msg.to.packed, "to")]


def _decode_rollback(header: Header, arrays: list[Array], limits: WireLimits) -> Rollback:
    new_epoch = _int_field(header, "new_epoch", 0, EPOCH_MAX)
    created_ms = _int_field(header, "created_ms", 0, INT64_MAX)
    _expect_count(arrays, 1)
    return Rollback(_vector(arrays[0], "to", limits), new_epoch, created_ms)


def _encode_sync_digest(msg: SyncDigest) -> tuple[Header, list[Array]]:
    root = _byte_array(msg.root, "root")
    vector = _int_array(msg.vector.packed, "vector")
    watermark = _int_array(msg.watermark.packed, "watermark")
    digests = _u64_array(msg.digests, "digests")
    if root.size != ROOT_BYTES:
        raise ValueError(f"root must be {ROOT_BYTES} bytes, got {root.size}")
    if watermark.shape != vector.shape or digests.shape != vector.shape:
        raise ValueError("vector, watermark and digests must be flat and of equal length")
    fields: Header = {
        "sender": _out_str(msg.sender, "sender", MAX_SENDER_CHARS),
        "epoch": _out_int(msg.epoch, "epoch", EPOCH_MAX),
        "root": root.tobytes().hex(),
        "is_reply": _out_bool(msg.is_reply, "is_reply"),
    }
    return fields, [vector, watermark, digests]


def _decode_sync_digest(header: Header, arrays: list[Array], limits: WireLimits) -> SyncDigest:
    sender = _str_field(header, "sender", MAX_SENDER_CHARS)
    epoch = _int_field(header, "epoch", 0, EPOCH_MAX)
    root = header.get("root")
    if not (isinstance(root, str) and len(root) == 2 * ROOT_BYTES and _HEX.issuperset(root)):
        raise RemoteProtocolError(f"root must be {2 * ROOT_BYTES} lowercase hex digits")
    is_reply = _bool_field(header, "is_reply")
    _expect_count(arrays, 3)
    vector = _vector(arrays[0], "vector", limits)
    _expect(arrays[1], "watermark", _INT, 1, len(vector))
    watermark = _vector(arrays[1], "watermark", limits)
    _expect(arrays[2], "digests", _U64, 1, len(vector))
    return SyncDigest(sender, epoch, bytes.fromhex(root), vector, arrays[2], watermark, is_reply)


def _encode_sync_request(msg: SyncRequest) -> tuple[Header, list[Array]]:
    shards = _int_array(msg.shards, "shards")
    since = _int_array(msg.since, "since")
    if shards.ndim != 1 or since.shape != shards.shape:
        raise ValueError("shards and since must be flat and of equal length")
    fields: Header = {
        "sender": _out_str(msg.sender, "sender", MAX_SENDER_CHARS),
        "snapshot_only": _out_bool(msg.snapshot_only, "snapshot_only"),
    }
    return fields, [shards, since]


def _decode_sync_request(header: Header, arrays: list[Array], limits: WireLimits) -> SyncRequest:
    sender = _str_field(header, "sender", MAX_SENDER_CHARS)
    snapshot_only = _bool_field(header, "snapshot_only")
    _expect_count(arrays, 2)
    m = _shard_ids(arrays[0], "shards", limits)
    _expect(arrays[1], "since", _INT, 1, m)
    if m and arrays[1].min() < 0:
        raise RemoteProtocolError("since: negative packed version")
    return SyncRequest(sender, tuple(arrays[0].tolist()), tuple(arrays[1].tolist()), snapshot_only)


def _encode_shard_snapshot(msg: ShardSnapshot) -> tuple[Header, list[Array]]:
    fields: Header = {
        "shard": _out_int(msg.shard, "shard", SHARD_LIMIT - 1),
        "version": _out_int(msg.version, "version"),
    }
    return fields, [_byte_array(msg.data, "data")]


def _decode_shard_snapshot(
    header: Header, arrays: list[Array], limits: WireLimits
) -> ShardSnapshot:
    shard = _int_field(header, "shard", 0, SHARD_LIMIT - 1)
    version = _int_field(header, "version", 0, INT64_MAX)
    _expect_count(arrays, 1)
    _expect(arrays[0], "data", _BYTES, 1)
    return ShardSnapshot(shard, version, arrays[0].data)  # a read-only view, no copy


def _encode_control_request(msg: ControlRequest) -> tuple[Header, list[Array]]:
    fields: Header = {
        "sender": _out_str(msg.sender, "sender", MAX_SENDER_CHARS),
        "epoch": _out_int(msg.epoch, "epoch", EPOCH_MAX),
    }
    return fields, []


def _decode_control_request(
    header: Header, arrays: list[Array], limits: WireLimits
) -> ControlRequest:
    sender = _str_field(header, "sender", MAX_SENDER_CHARS)
    epoch = _int_field(header, "epoch", 0, EPOCH_MAX)
    _expect_count(arrays, 0)
    return ControlRequest(sender, epoch)


def _json_problem(body: object) -> str | None:
    """Why ``body`` is not plain JSON that round-trips unchanged (None when it is). Iterative:
    a hostile body nests as deep as the header limit allows, far past Python's stack."""
    stack: list[tuple[object, object, int]] = [(body, "body", 0)]
    while stack:
        value, key, depth = stack.pop()
        if value is None or isinstance(value, bool | str):
            continue
        if isinstance(value, int):
            if not -(1 << 63) <= value < 1 << 64:
                return f"body: at {key!r}: integer {value} does not fit 64 bits"
        elif type(value) is float:  # (not numpy's float64: orjson refuses it)
            if not math.isfinite(value):
                return f"body: at {key!r}: non-finite float {value}"
        elif isinstance(value, list | dict):
            if depth >= MAX_JSON_DEPTH:
                return f"body: at {key!r}: nested deeper than {MAX_JSON_DEPTH}"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for inner, item in items:
                if isinstance(value, dict) and not isinstance(inner, str):
                    return f"body: at {key!r}: key {inner!r} is not a string"
                stack.append((item, inner, depth + 1))
        else:
            return f"body: at {key!r}: {type(value).__name__} is not a JSON value"
    return None


def _encode_membership(msg: MembershipEnvelope) -> tuple[Header, list[Array]]:
    if not isinstance(msg.body, dict):
        raise ValueError(f"body must be a dict, got {type(msg.body).__name__}")
    problem = _json_problem(msg.body)
    if problem:
        raise ValueError(problem)
    fields: Header = {"kind": _out_str(msg.kind, "kind", MAX_NAME_CHARS), "body": msg.body}
    return fields, []


def _decode_membership(
    header: Header, arrays: list[Array], limits: WireLimits
) -> MembershipEnvelope:
    kind = _str_field(header, "kind", MAX_NAME_CHARS)
    body = header.get("body")
    if not isinstance(body, dict):
        raise RemoteProtocolError("body must be a JSON object")
    problem = _json_problem(body)  # (only the depth can be wrong in parsed JSON)
    if problem:
        raise RemoteProtocolError(problem)
    _expect_count(arrays, 0)
    return MembershipEnvelope(kind, body)


@dataclass(frozen=True, slots=True)
class _Codec:
    cls: type
    encode: Callable[[Any], tuple[Header, list[Array]]]
    decode: Callable[[Header, list[Array], WireLimits], WireMessage]


_CODECS: dict[MsgType, _Codec] = {
    MsgType.DELTA: _Codec(ParamDelta, _encode_delta, _decode_delta),
    MsgType.VALIDATED: _Codec(Validated, _encode_validated, _decode_validated),
    MsgType.ROLLBACK: _Codec(Rollback, _encode_rollback, _decode_rollback),
    MsgType.SYNC_DIGEST: _Codec(SyncDigest, _encode_sync_digest, _decode_sync_digest),
    MsgType.SYNC_REQUEST: _Codec(SyncRequest, _encode_sync_request, _decode_sync_request),
    MsgType.SHARD_SNAPSHOT: _Codec(ShardSnapshot, _encode_shard_snapshot, _decode_shard_snapshot),
    MsgType.CONTROL_REQUEST: _Codec(
        ControlRequest, _encode_control_request, _decode_control_request
    ),
    MsgType.MEMBERSHIP: _Codec(MembershipEnvelope, _encode_membership, _decode_membership),
}
_TYPE_OF: dict[type, MsgType] = {codec.cls: mt for mt, codec in _CODECS.items()}

if set(_CODECS) != set(MsgType):  # a new MsgType needs its codec pair here
    raise ImportError(f"no codec for {set(MsgType) - set(_CODECS)}")
