"""Tuning of the SWIM membership protocol (defaults: memberlist's LAN profile)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MembershipConfig:
    """Every duration is in seconds and is stretched by the local-health multiplier where noted.

    Every node probes one member per interval, so a crashed node fails some node's probe
    within an interval or two; it is declared dead after the suspicion timeout that follows
    (``suspicion_mult * max(1, log10(n)) * probe_interval_s`` once confirmed by others).
    """

    # Seconds between two probes of this node (one member each, shuffled round-robin);
    # stretched by local health.
    probe_interval_s: float = 1.0
    # Seconds to wait for a direct ack before asking helpers for an indirect probe; must be
    # below probe_interval_s (the rest of the interval waits for indirect acks). Stretched.
    probe_timeout_s: float = 0.5
    # Helpers asked to probe an unresponsive member (SWIM's k).
    indirect_checks: int = 3
    # Base suspicion timeout = suspicion_mult * max(1, log10(n)) * probe_interval_s; also
    # sets Lifeguard's expected confirmations (suspicion_mult - 2). Stretched.
    suspicion_mult: int = 4
    # A suspicion nobody confirms lasts this many base timeouts (Lifeguard); each independent
    # confirmation shortens it towards the base timeout.
    suspicion_max_timeout_mult: int = 6
    # Each membership update is sent retransmit_mult * ceil(log10(n + 1)) times.
    retransmit_mult: int = 4
    # Seconds between gossip rounds (only while there is news to spread).
    gossip_interval_s: float = 0.2
    # Peers each gossip round is sent to.
    gossip_nodes: int = 3
    # Most updates piggybacked on one message (bounds message size).
    max_piggyback: int = 16
    # Seconds a dead (or left) member's record is kept, and gossiped to so it can refute,
    # before it is forgotten; a node with that id is then accepted as new at any incarnation.
    dead_node_reclaim_s: float = 30.0
    # Seconds between push-pull state exchanges with a random seed: merges the two sides of a
    # partition that outlasted dead_node_reclaim_s, without a restart.
    rejoin_interval_s: float = 10.0
    # Seconds between join attempts (to every seed) while no other member is known alive.
    join_retry_interval_s: float = 1.0
    # Lifeguard: the most the local-health multiplier may stretch timeouts (1 disables it).
    awareness_max_multiplier: int = 8
    # Bound of the member table (and so of push-pull messages and the broadcast queue);
    # records of further unknown nodes are dropped and counted.
    members_max: int = 4096

    def __post_init__(self) -> None:
        positive = {
            "probe_interval_s": self.probe_interval_s,
            "probe_timeout_s": self.probe_timeout_s,
            "gossip_interval_s": self.gossip_interval_s,
            "rejoin_interval_s": self.rejoin_interval_s,
            "join_retry_interval_s": self.join_retry_interval_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.probe_timeout_s >= self.probe_interval_s:
            raise ValueError(
                f"probe_timeout_s ({self.probe_timeout_s}) must be below "
                f"probe_interval_s ({self.probe_interval_s})"
            )
        if self.dead_node_reclaim_s < 0:
            raise ValueError(f"dead_node_reclaim_s must be >= 0, got {self.dead_node_reclaim_s}")
        self._check_counts()

    def _check_counts(self) -> None:
        at_least_one = {
            "suspicion_mult": self.suspicion_mult,
            "suspicion_max_timeout_mult": self.suspicion_max_timeout_mult,
            "retransmit_mult": self.retransmit_mult,
            "gossip_nodes": self.gossip_nodes,
            "max_piggyback": self.max_piggyback,
            "awareness_max_multiplier": self.awareness_max_multiplier,
            "members_max": self.members_max,
        }
        for name, value in at_least_one.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.indirect_checks < 0:
            raise ValueError(f"indirect_checks must be >= 0, got {self.indirect_checks}")
