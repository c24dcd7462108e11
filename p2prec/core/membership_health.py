"""Lifeguard's local health (memberlist's "awareness"): how much to distrust oneself.

A node that misses acks of its own probes, gets no nacks back from the helpers of its indirect
probes, or has to refute suspicions about itself is probably the slow one (CPU starved, long GC,
saturated link). Its score rises, and the multiplier ``score + 1`` stretches its probe interval,
probe timeout and suspicion timeouts, so it stops accusing healthy peers. Successful probes lower
the score again.
"""

from __future__ import annotations


class LocalHealth:
    """A score in ``[0, max_multiplier - 1]``; ``multiplier`` is ``score + 1``."""

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError(f"max_multiplier must be >= 1, got {max_multiplier}")
        self.max_multiplier = max_multiplier
        self.score = 0

    @property
    def multiplier(self) -> int:
        return self.score + 1

    def apply(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)

    def scale(self, seconds: float) -> float:
        return seconds * self.multiplier
