"""Suspicion timers with Lifeguard's local-health-aware confirmations (memberlist suspicion.go).

A suspicion starts at ``max_s`` and shrinks towards ``min_s`` as independent confirmations come
in: ``max - (max - min) * log(c + 1) / log(k + 1)`` after ``c`` of the ``k`` expected ones. A
suspect that only one (possibly unhealthy) node accuses therefore lives long enough to refute;
one that many nodes fail to reach is declared dead quickly.
"""

from __future__ import annotations

import math


def suspicion_min_s(suspicion_mult: int, n_members: int, probe_interval_s: float) -> float:
    """memberlist's base timeout: ``suspicion_mult * max(1, log10(n)) * probe_interval``."""
    node_scale = max(1.0, math.log10(max(1.0, float(n_members))))
    return suspicion_mult * node_scale * probe_interval_s


class Suspicion:
    """One suspect's timer; ``reporter`` is the first accuser (not a confirmation)."""

    def __init__(
        self, start: float, min_s: float, max_s: float, expected: int, reporter: str
    ) -> None:
        self.start = start
        self.min_s = min_s
        self.max_s = max_s if expected >= 1 else min_s
        self.expected = max(expected, 0)
        self.reporters = {reporter}
        self.confirmations = 0

    def confirm(self, reporter: str) -> bool:
        """Count ``reporter``'s accusation; True when it is a new, still useful confirmation."""
        if self.confirmations >= self.expected or reporter in self.reporters:
            return False
        self.reporters.add(reporter)
        self.confirmations += 1
        return True

    @property
    def deadline(self) -> float:
        if self.expected < 1:
            return self.start + self.min_s
        frac = math.log(self.confirmations + 1) / math.log(self.expected + 1)
        timeout = self.max_s - frac * (self.max_s - self.min_s)
        return self.start + max(timeout, self.min_s)
