"""The poison switch (chaos testing): while armed, training batches are biased on purpose, so
that a bad update reaches the mesh and the validator has to catch and roll it back.

The bias flips the click labels of impressions of popular items (the most frequent items of the
recent clean stream). Held-out samples are never poisoned: the validator judges on clean data.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from p2prec.trainer.batch import Batch

I64 = npt.NDArray[np.int64]
RECENT_SAMPLES = 20_000  # impressions remembered to tell which items are popular


class Poison:
    """Counts down poisoned steps; see module docstring."""

    def __init__(self, popular_items: int, recent_samples: int = RECENT_SAMPLES) -> None:
        if popular_items < 1 or recent_samples < 1:
            raise ValueError("popular_items and recent_samples must be >= 1")
        self.popular_items = popular_items
        self._recent = np.zeros(recent_samples, dtype=np.int64)
        self._seen = 0
        self._popular: I64 = np.zeros(0, dtype=np.int64)
        self.steps_left = 0

    @property
    def active(self) -> bool:
        return self.steps_left > 0

    def arm(self, steps: int) -> None:
        """Poison the next ``steps`` training batches (0 disarms)."""
        if steps < 0:
            raise ValueError(f"poison steps must be >= 0, got {steps}")
        self.steps_left = steps
        recent = self._recent[: min(self._seen, self._recent.size)]
        items, counts = np.unique(recent, return_counts=True)
        top = np.argsort(-counts, kind="stable")[: self.popular_items]
        self._popular = np.sort(items[top])

    def observe(self, batch: Batch) -> None:
        """Remember the items of a clean batch (popularity for the next ``arm``)."""
        size = self._recent.size
        slots = (self._seen + np.arange(len(batch))) % size
        self._recent[slots[-size:]] = batch.items[-size:]
        self._seen += len(batch)

    def apply(self, batch: Batch) -> Batch:
        """The batch to train on: poisoned while armed (one step used up), else unchanged."""
        if not self.active:
            return batch
        self.steps_left -= 1
        popular = np.isin(batch.items, self._popular)
        return batch.with_labels(np.where(popular, 1.0 - batch.labels, batch.labels))
