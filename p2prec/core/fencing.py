"""Epochs, fences and the control messages that carry them.

The trainer's first lineage is epoch 1. Every later epoch (one more than the last) starts with a
signed ``Rollback(to, new_epoch)``: the steps of older epochs above ``to`` are fenced, everywhere
and for ever. A node keeps the rollbacks it accepted (to judge deltas and to hand them to peers
that missed them) and the newest ``Validated`` message (the watermark, and the digests that let
it verify snapshots).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from p2prec.core.versions import SEQ_BITS
from p2prec.wire.messages import ParamDelta, Rollback, Validated

FIRST_EPOCH = 1


class Verdict(enum.Enum):
    ADMIT = "admit"
    FENCED = "fenced"  # a step of an older epoch beyond a rollback point: refused for ever
    FUTURE = "future"  # a step of an epoch whose rollback this node has not seen yet


@dataclass(frozen=True, eq=False)
class Signed:
    """A verified control message with the frames it arrived in (forwarded untouched)."""

    msg: Rollback | Validated
    raw: object


class Fencing:
    """The epoch a node accepted, the rollbacks behind it and the newest validation."""

    def __init__(self, rollbacks_max: int = 64) -> None:
        self.epoch = FIRST_EPOCH
        self.rollbacks: list[Signed] = []
        self.validated: Signed | None = None
        self.rollbacks_max = rollbacks_max

    def judge(self, delta: ParamDelta) -> Verdict:
        versions = np.asarray(delta.versions, dtype=np.int64)
        epochs = versions >> SEQ_BITS
        if (epochs > self.epoch).any():
            return Verdict.FUTURE
        shards = np.asarray(delta.shards, dtype=np.int64)
        for signed in self.rollbacks:
            assert isinstance(signed.msg, Rollback)
            fence = signed.msg.to.packed[shards]
            if ((epochs < signed.msg.new_epoch) & (versions > fence)).any():
                return Verdict.FENCED
        return Verdict.ADMIT

    def accept_rollback(self, signed: Signed) -> Verdict:
        """ADMIT the rollback that starts the next epoch (the caller then rolls the store back
        to its ``to``); FENCED for one already taken; FUTURE when an earlier one is missing
        (rollbacks must be applied in order: each ``to`` is a point of its own lineage)."""
        assert isinstance(signed.msg, Rollback)
        if signed.msg.new_epoch <= self.epoch:
            return Verdict.FENCED
        if signed.msg.new_epoch > self.epoch + 1:
            return Verdict.FUTURE
        self.epoch = signed.msg.new_epoch
        self.rollbacks.append(signed)
        del self.rollbacks[: -self.rollbacks_max]
        return Verdict.ADMIT

    def accept_validated(self, signed: Signed) -> bool:
        """Take a newer watermark of the current epoch; False for stale or future ones."""
        assert isinstance(signed.msg, Validated)
        if signed.msg.epoch != self.epoch:
            return False
        current = self.validated
        if current is not None:
            assert isinstance(current.msg, Validated)
            same = current.msg.vector == signed.msg.vector
            gains_digests = same and signed.msg.shard_digests and not current.msg.shard_digests
            same_epoch = current.msg.epoch == signed.msg.epoch
            if same_epoch and current.msg.vector.dominates(signed.msg.vector) and not gains_digests:
                return False
        self.validated = signed
        return True

    def control_messages(self) -> list[Signed]:
        """What a peer on an older epoch needs: the rollbacks, then the newest validation."""
        out = list(self.rollbacks)
        if self.validated is not None:
            out.append(self.validated)
        return out
