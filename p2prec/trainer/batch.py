"""A mini-batch of labelled impressions, and the protocol every click-stream source follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Batch:
    """Impressions ``(users[i], items[i])`` with click labels (0 or 1) at stream times."""

    users: I64
    items: I64
    labels: F32
    times_s: F64  # stream time of each impression, in seconds

    def __post_init__(self) -> None:
        n = self.users.shape[0]
        if any(a.shape != (n,) for a in (self.users, self.items, self.labels, self.times_s)):
            raise ValueError("batch arrays must be 1-D and of equal length")

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def take(self, mask: npt.NDArray[np.bool_]) -> Batch:
        return Batch(self.users[mask], self.items[mask], self.labels[mask], self.times_s[mask])

    def with_labels(self, labels: F32) -> Batch:
        return Batch(self.users, self.items, labels, self.times_s)

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        if not batches:
            return Batch(
                np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0)
            )
        return Batch(
            np.concatenate([b.users for b in batches]),
            np.concatenate([b.items for b in batches]),
            np.concatenate([b.labels for b in batches]),
            np.concatenate([b.times_s for b in batches]),
        )


class BatchSource(Protocol):
    """A click stream: batches in stream order; ``None`` once it has ended. Its state (for the
    trainer's checkpoint) is plain values and numpy arrays."""

    def next_batch(self) -> Batch | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
