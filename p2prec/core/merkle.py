"""A Merkle tree over shard digests: one root per store, narrowed to differing shards.

Leaves are the 64-bit content digests of the shards (``model.store``); inner nodes are 16-byte
BLAKE3 hashes. Equal content gives equal roots whatever order deltas came in; comparing two
trees level by level names exactly the shards whose digests differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from blake3 import blake3

NODE_BYTES = 16
_EMPTY = blake3(b"p2prec-merkle-empty").digest(NODE_BYTES)


def _leaf(shard: int, digest: int) -> bytes:
    data = b"p2prec-leaf" + shard.to_bytes(4, "little") + digest.to_bytes(8, "little")
    return blake3(data).digest(NODE_BYTES)


def _node(left: bytes, right: bytes) -> bytes:
    return blake3(b"p2prec-node" + left + right).digest(NODE_BYTES)


@dataclass(frozen=True)
class MerkleTree:
    """Levels from the leaves (level 0, padded to a power of two) up to the root."""

    n_leaves: int
    levels: tuple[tuple[bytes, ...], ...]

    @classmethod
    def build(cls, digests: npt.NDArray[np.uint64]) -> MerkleTree:
        leaves = [_leaf(i, int(d)) for i, d in enumerate(digests)]
        width = 1
        while width < len(leaves):
            width *= 2
        level = tuple(leaves + [_EMPTY] * (width - len(leaves)))
        levels = [level]
        while len(level) > 1:
            level = tuple(_node(level[i], level[i + 1]) for i in range(0, len(level), 2))
            levels.append(level)
        return cls(len(leaves), tuple(levels))

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    @property
    def root_hex(self) -> str:
        return self.root.hex()

    def level(self, depth: int) -> tuple[bytes, ...]:
        """Nodes ``depth`` steps below the root (0 = the root alone)."""
        return self.levels[len(self.levels) - 1 - depth]

    def diff(self, other: MerkleTree) -> list[int]:
        """Shards whose leaves differ, found by descending only into differing subtrees."""
        if self.n_leaves != other.n_leaves:
            raise ValueError(f"trees over {self.n_leaves} and {other.n_leaves} leaves")
        suspects = [0]
        for depth in range(len(self.levels) - 1, -1, -1):
            mine, theirs = self.levels[depth], other.levels[depth]
            differing = [i for i in suspects if mine[i] != theirs[i]]
            if depth == 0:
                return [i for i in differing if i < self.n_leaves]
            suspects = [c for i in differing for c in (2 * i, 2 * i + 1)]
        return []
