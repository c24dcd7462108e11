"""The shape of a parameter store: tables, row dimension, dtype and shard count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class StoreLayout:
    """Shards ``0..row_shards-1`` hold embedding rows; shard ``row_shards`` is the dense shard."""

    row_shards: int = 64
    dim: int = 64
    tables: tuple[str, ...] = ("user", "item")
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.row_shards < 1:
            raise ValueError(f"row_shards must be >= 1, got {self.row_shards}")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if not self.tables or len(set(self.tables)) != len(self.tables):
            raise ValueError(f"tables must be non-empty and unique, got {self.tables}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def n_shards(self) -> int:
        return self.row_shards + 1

    @property
    def dense_shard(self) -> int:
        return self.row_shards

    @property
    def np_dtype(self) -> np.dtype[np.floating]:
        return np.dtype(self.dtype)
