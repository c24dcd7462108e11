"""Message types and their dataclasses (DESIGN.md section 4).

``MsgType`` is append-only: never renumber or reuse a value; a new message gets the next number.
``PROTOCOL_VERSION`` rises only when an existing message's encoding changes incompatibly.

Arrays in decoded messages are read-only views of the received frames (zero-copy).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from p2prec.core.versions import PackedArray, VersionVector

PROTOCOL_VERSION = 2
#: Versions ``decode`` reads: 1 (every buffer in its own frame) for logs written before 2.
READABLE_PROTOCOL_VERSIONS = (1, 2)

Int64Array: TypeAlias = npt.NDArray[np.int64]
FloatArray: TypeAlias = npt.NDArray[np.floating]


class MsgType(enum.IntEnum):
    """Append-only registry of message types."""

    DELTA = 1
    VALIDATED = 2
    ROLLBACK = 3
    # Mesh messages: unsigned, authenticated hop by hop by the CURVE transport.
    SYNC_DIGEST = 4
    SYNC_REQUEST = 5
    SHARD_SNAPSHOT = 6
    CONTROL_REQUEST = 7
    MEMBERSHIP = 8


#: Message types that must carry a valid trainer signature to be accepted.
SIGNED_TYPES = frozenset({MsgType.DELTA, MsgType.VALIDATED, MsgType.ROLLBACK})


@dataclass(frozen=True, eq=False)
class TableRows:
    """Rows of one embedding table inside a delta."""

    # Arbitrary int64 ids; unique within one TableRows.
    keys: Int64Array
    # Packed version (see core.versions) that wrote each row: the receiver keeps a row only if
    # this is newer than what it holds, which makes deltas idempotent state, not increments.
    versions: PackedArray
    # New values, shape (len(keys), dim); float32 (or float16 for compact tables).
    rows: FloatArray

    def __len__(self) -> int:
        return int(self.keys.shape[0])


@dataclass(frozen=True, eq=False)
class ParamDelta:
    """New state of the parameter rows one publication step touched.

    One delta may step many shards (one version step each): publishing one message per shard
    per training step would drown in per-message cost. A catch-up answer uses the same type with
    a base older than ``versions - 1`` and rows of mixed versions.
    """

    # Shards this delta steps (strictly increasing), with per-shard base and new version.
    shards: tuple[int, ...]
    # Packed version each shard must be at (or past) for this delta to apply without a gap.
    bases: tuple[int, ...]
    # Packed version each shard reaches once this delta is applied.
    versions: tuple[int, ...]
    # Embedding rows by table name.
    tables: Mapping[str, TableRows] = field(default_factory=dict)
    # Dense tensors (replaced whole) by name; they belong to the dense shard.
    dense: Mapping[str, FloatArray] = field(default_factory=dict)
    # Trainer wall clock (ms since the Unix epoch) at publication, for end-to-end lag figures.
    created_ms: int = 0

    @property
    def row_count(self) -> int:
        return sum(len(t) for t in self.tables.values())


@dataclass(frozen=True, eq=False)
class Validated:
    """The validator approved the model state up to ``vector``: the new validation watermark."""

    # Every row at or below this vector is validated; nodes may drop undo information below it.
    vector: VersionVector
    # Epoch of the trainer lineage this watermark belongs to (fencing).
    epoch: int
    # Trainer wall clock at publication (ms since the Unix epoch).
    created_ms: int = 0
    # BLAKE3-256 of each shard's canonical snapshot at ``vector`` (n_shards x 32 bytes, or
    # empty): lets a node verify a full-shard snapshot served by an untrusted peer.
    shard_digests: bytes = b""


@dataclass(frozen=True, eq=False)
class Rollback:
    """Undo every update above ``to`` and fence the old lineage with ``new_epoch``."""

    # Target state: normally the last validated watermark.
    to: VersionVector
    # Epoch of the lineage that continues from ``to``; deltas of older epochs are refused.
    new_epoch: int
    # Trainer wall clock at publication (ms since the Unix epoch).
    created_ms: int = 0


@dataclass(frozen=True, eq=False)
class SyncDigest:
    """Anti-entropy gossip: what the sender holds, enough to find and narrow a difference."""

    sender: str
    # Highest epoch the sender accepted: a peer on an older epoch asks for the control messages.
    epoch: int
    # Merkle root of the sender's content (16 bytes).
    root: bytes
    # Sender's version vector: shards where it is ahead are pulled from it.
    vector: VersionVector
    # Per-shard 64-bit content digests: narrow a difference between equal versions.
    digests: npt.NDArray[np.uint64]
    # Sender's validation watermark.
    watermark: VersionVector
    # True when sent in answer to a digest (no answer is given to an answer).
    is_reply: bool = False


@dataclass(frozen=True, eq=False)
class SyncRequest:
    """Ask a peer for what it holds past ``since`` in ``shards`` (the signed deltas when its log
    reaches back, a verified snapshot at the watermark otherwise)."""

    sender: str
    shards: tuple[int, ...]
    # Requester's packed versions of those shards.
    since: tuple[int, ...]
    # Shards whose content differs at equal versions: send a snapshot whatever the log holds.
    snapshot_only: bool = False


@dataclass(frozen=True, eq=False)
class ShardSnapshot:
    """One shard's canonical snapshot at the validation watermark (model/snapshot.py bytes)."""

    shard: int
    version: int
    # Decoded: a read-only memoryview of the received frame (zero-copy; snapshots are large).
    data: bytes | memoryview


@dataclass(frozen=True, eq=False)
class ControlRequest:
    """Ask a peer on a newer epoch for its signed rollback and validated messages."""

    sender: str
    epoch: int


@dataclass(frozen=True, eq=False)
class MembershipEnvelope:
    """A membership (SWIM) message, carried as JSON until its own dataclasses are registered."""

    # Which membership message this is (ping, ack, ...): 1..64 chars.
    kind: str
    # Its fields: JSON values only (str, int, float, bool, None, list, dict with str keys).
    body: dict[str, Any]


Message: TypeAlias = ParamDelta | Validated | Rollback
MeshMessage: TypeAlias = (
    SyncDigest | SyncRequest | ShardSnapshot | ControlRequest | MembershipEnvelope
)
