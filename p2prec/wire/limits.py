"""Bounds on what a peer may make us parse and hold (DESIGN.md section 4: every message is bounded).

``WireLimits`` is a plain frozen dataclass so that the config module can build it from TOML.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

KIB = 1 << 10
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Size limits enforced by ``codec.decode`` before anything is parsed or hashed."""

    # Largest single payload buffer (one embedding table's rows, one dense tensor, one shard
    # snapshot).
    max_frame_bytes: int = 64 * MIB
    # Most frames in one message, header and signature included.
    max_frames: int = 256
    # Largest JSON header (it bounds a membership message's body).
    max_header_bytes: int = 256 * KIB
    # Largest message, all frames together.
    max_message_bytes: int = 256 * MIB
    # Longest version vector, and most shards one delta may step or one sync request name.
    max_vector_len: int = 65536
    # Most embedding tables in one delta.
    max_tables: int = 64
    # Most dense tensors in one delta.
    max_dense: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"WireLimits.{f.name} must be a positive int, got {value!r}")
        if self.max_frames < 2:
            raise ValueError("WireLimits.max_frames must allow the header and signature frames")


DEFAULT_LIMITS = WireLimits()
