"""Versions and version vectors (DESIGN.md section 2).

A ``Version`` is ``(epoch, seq)``, ordered lexicographically. ``seq`` rises per shard with every
delta; ``epoch`` rises when the trainer restarts or rolls back and fences the old lineage.

For vectorised work a version is packed into one int64: ``epoch << SEQ_BITS | seq``. Packing
preserves the order, so numpy compares packed versions directly. ``0`` (epoch 0, seq 0) is the
version of an empty shard; ``NO_VERSION`` (-1) marks "no row" in per-row version arrays.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

SEQ_BITS = 40
EPOCH_BITS = 23  # 63 bits in all: packed versions stay positive int64
SEQ_MAX = (1 << SEQ_BITS) - 1
EPOCH_MAX = (1 << EPOCH_BITS) - 1
NO_VERSION = -1

PackedArray = npt.NDArray[np.int64]


@dataclass(frozen=True, order=True, slots=True)
class Version:
    """One step of one shard's lineage; compares as the tuple ``(epoch, seq)``."""

    epoch: int
    seq: int

    def __post_init__(self) -> None:
        if not 0 <= self.epoch <= EPOCH_MAX:
            raise ValueError(f"epoch {self.epoch} outside 0..{EPOCH_MAX}")
        if not 0 <= self.seq <= SEQ_MAX:
            raise ValueError(f"seq {self.seq} outside 0..{SEQ_MAX}")

    @property
    def packed(self) -> int:
        return (self.epoch << SEQ_BITS) | self.seq

    @classmethod
    def unpack(cls, packed: int) -> Version:
        packed = int(packed)
        if packed < 0:
            raise ValueError(f"packed version {packed} is negative")
        return cls(packed >> SEQ_BITS, packed & SEQ_MAX)

    def next(self, epoch: int | None = None) -> Version:
        """The following version: next seq, in ``epoch`` if given (it may only rise)."""
        new_epoch = self.epoch if epoch is None else epoch
        if new_epoch < self.epoch:
            raise ValueError(f"epoch may not go back from {self.epoch} to {new_epoch}")
        return Version(new_epoch, self.seq + 1)

    def __str__(self) -> str:
        return f"{self.epoch}.{self.seq}"


ZERO = Version(0, 0)


def pack(epoch: int, seq: int) -> int:
    return Version(epoch, seq).packed


def next_packed(bases: PackedArray, epoch: int) -> PackedArray:
    """``Version.unpack(b).next(epoch).packed`` of every packed version in ``bases`` at once
    (a publisher steps all 65 shards per delta: one dataclass round trip each took ~2 us)."""
    bases = np.asarray(bases, dtype=np.int64)
    if (bases < 0).any():
        raise ValueError("packed versions are negative")
    if not 0 <= epoch <= EPOCH_MAX or (bases >> SEQ_BITS > epoch).any():
        raise ValueError(f"epoch {epoch} is outside 0..{EPOCH_MAX} or below a base's epoch")
    seqs = (bases & SEQ_MAX) + 1
    if (seqs > SEQ_MAX).any():
        raise ValueError(f"seq beyond {SEQ_MAX}")
    return (np.int64(epoch) << SEQ_BITS) | seqs


class Order(enum.Enum):
    """Partial order of two version vectors."""

    EQUAL = "equal"
    BEFORE = "before"  # every shard <=, one strictly <
    AFTER = "after"
    CONCURRENT = "concurrent"


class VersionVector:
    """For every shard, the highest version up to which everything has been applied.

    Immutable: operations return new vectors. Backed by a read-only packed int64 array.
    """

    __slots__ = ("_packed",)

    def __init__(self, packed: npt.ArrayLike) -> None:
        arr = np.array(packed, dtype=np.int64, copy=True).reshape(-1)
        if arr.size and int(arr.min()) < 0:
            raise ValueError("version vector holds a negative packed version")
        arr.flags.writeable = False
        self._packed = arr

    @classmethod
    def zeros(cls, n_shards: int) -> VersionVector:
        return cls(np.zeros(n_shards, dtype=np.int64))

    @classmethod
    def of(cls, versions: Iterable[Version]) -> VersionVector:
        return cls([v.packed for v in versions])

    @property
    def packed(self) -> PackedArray:
        """Read-only packed array (one int64 per shard)."""
        return self._packed

    def __len__(self) -> int:
        return int(self._packed.size)

    def __getitem__(self, shard: int) -> Version:
        return Version.unpack(int(self._packed[shard]))

    def __iter__(self) -> Any:
        return (Version.unpack(int(p)) for p in self._packed)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionVector):
            return NotImplemented
        return bool(np.array_equal(self._packed, other._packed))

    def __hash__(self) -> int:
        return hash(self._packed.tobytes())

    def __repr__(self) -> str:
        return f"VersionVector({self.summary()})"

    def _check_same_size(self, other: VersionVector) -> None:
        if len(self) != len(other):
            raise ValueError(f"vectors over {len(self)} and {len(other)} shards")

    def compare(self, other: VersionVector) -> Order:
        self._check_same_size(other)
        le = bool(np.all(self._packed <= other._packed))
        ge = bool(np.all(self._packed >= other._packed))
        if le and ge:
            return Order.EQUAL
        if le:
            return Order.BEFORE
        if ge:
            return Order.AFTER
        return Order.CONCURRENT

    def dominates(self, other: VersionVector) -> bool:
        """True when every shard of ``self`` is at least ``other``'s."""
        self._check_same_size(other)
        return bool(np.all(self._packed >= other._packed))

    def merge(self, other: VersionVector) -> VersionVector:
        """Shard-wise maximum."""
        self._check_same_size(other)
        return VersionVector(np.maximum(self._packed, other._packed))

    def differing_shards(self, other: VersionVector) -> npt.NDArray[np.intp]:
        """Indices of the shards whose versions differ."""
        self._check_same_size(other)
        return np.flatnonzero(self._packed != other._packed)

    def behind_shards(self, other: VersionVector) -> npt.NDArray[np.intp]:
        """Indices of the shards where ``self`` is older than ``other``."""
        self._check_same_size(other)
        return np.flatnonzero(self._packed < other._packed)

    def replace(
        self, shards: Sequence[int] | npt.NDArray[np.intp], packed: npt.ArrayLike
    ) -> VersionVector:
        arr = self._packed.copy()
        arr[np.asarray(shards, dtype=np.intp)] = np.asarray(packed, dtype=np.int64)
        return VersionVector(arr)

    @property
    def max_epoch(self) -> int:
        return int(self._packed.max() >> SEQ_BITS) if self._packed.size else 0

    def total_seq(self) -> int:
        """Sum of the seqs over shards: a scalar 'how far along' for lag reports."""
        return int((self._packed & SEQ_MAX).sum())

    def summary(self) -> str:
        """Compact human form: ``epoch:total_seq/shards``."""
        return f"e{self.max_epoch}:{self.total_seq()}/{len(self)}"

    def to_list(self) -> list[int]:
        return [int(p) for p in self._packed]
