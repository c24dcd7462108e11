"""Epoch fencing rules (p2prec.core.fencing): which deltas, rollbacks and validations a node
takes, and what it hands to a peer on an older epoch."""

from __future__ import annotations

import pytest

from p2prec.core.fencing import FIRST_EPOCH, Fencing, Signed, Verdict
from p2prec.core.versions import VersionVector, pack
from p2prec.wire.messages import ParamDelta, Rollback, Validated

N_SHARDS = 3


def delta(*steps: tuple[int, int, int]) -> ParamDelta:
    """A delta stepping each ``(shard, epoch, seq)`` from the seq before it (rows omitted)."""
    shards = tuple(s for s, _, _ in steps)
    versions = tuple(pack(e, q) for _, e, q in steps)
    return ParamDelta(shards, tuple(v - 1 for v in versions), versions)


def vector(*versions: tuple[int, int]) -> VersionVector:
    return VersionVector([pack(e, q) for e, q in versions])


def rollback(to: VersionVector, new_epoch: int) -> Signed:
    msg = Rollback(to, new_epoch)
    return Signed(msg, ("raw", msg))


def validated(vec: VersionVector, epoch: int) -> Signed:
    msg = Validated(vec, epoch)
    return Signed(msg, ("raw", msg))


TO = vector((1, 5), (1, 3), (0, 0))  # rollback point of epoch 1: shard 2 never written


def test_a_fresh_node_admits_epoch_one_and_holds_later_epochs() -> None:
    fencing = Fencing()
    assert fencing.epoch == FIRST_EPOCH == 1
    assert fencing.judge(delta((0, 1, 1), (2, 1, 9))) is Verdict.ADMIT
    assert fencing.judge(delta((0, 2, 1))) is Verdict.FUTURE
    assert fencing.judge(delta((0, 1, 7), (1, 2, 1))) is Verdict.FUTURE  # one shard suffices
    assert fencing.judge(ParamDelta((), (), ())) is Verdict.ADMIT


def test_a_rollback_fences_the_old_epoch_above_to_only() -> None:
    fencing = Fencing()
    assert fencing.accept_rollback(rollback(TO, 2)) is Verdict.ADMIT
    assert fencing.epoch == 2
    assert fencing.judge(delta((0, 1, 6))) is Verdict.FENCED  # above ``to``
    assert fencing.judge(delta((0, 1, 5))) is Verdict.ADMIT  # at ``to``
    assert fencing.judge(delta((0, 1, 4))) is Verdict.ADMIT  # below it
    assert fencing.judge(delta((2, 1, 1))) is Verdict.FENCED  # shard 2 is fenced at 0
    assert fencing.judge(delta((1, 1, 3), (0, 1, 6))) is Verdict.FENCED  # one shard suffices
    assert fencing.judge(delta((0, 2, 6), (2, 2, 1))) is Verdict.ADMIT  # the new lineage
    assert fencing.judge(delta((0, 3, 6))) is Verdict.FUTURE


def test_fences_of_every_rollback_apply() -> None:
    fencing = Fencing()
    fencing.accept_rollback(rollback(TO, 2))
    to3 = vector((2, 8), (1, 3), (2, 2))
    assert fencing.accept_rollback(rollback(to3, 3)) is Verdict.ADMIT
    assert fencing.judge(delta((0, 1, 6))) is Verdict.FENCED  # by the first rollback
    assert fencing.judge(delta((0, 2, 8))) is Verdict.ADMIT
    assert fencing.judge(delta((0, 2, 9))) is Verdict.FENCED  # by the second
    assert fencing.judge(delta((2, 2, 3))) is Verdict.FENCED
    assert fencing.judge(delta((0, 3, 9), (2, 3, 3))) is Verdict.ADMIT


def test_rollbacks_are_taken_once_and_in_order() -> None:
    fencing = Fencing()
    assert fencing.accept_rollback(rollback(TO, 3)) is Verdict.FUTURE  # epoch 2's is missing
    assert fencing.epoch == 1 and fencing.rollbacks == []
    assert fencing.judge(delta((0, 1, 6))) is Verdict.ADMIT  # a FUTURE rollback fences nothing
    first = rollback(TO, 2)
    assert fencing.accept_rollback(first) is Verdict.ADMIT
    assert fencing.accept_rollback(rollback(TO, 2)) is Verdict.FENCED  # already taken
    assert fencing.accept_rollback(rollback(TO, 1)) is Verdict.FENCED
    assert fencing.epoch == 2 and fencing.rollbacks == [first]
    second = rollback(TO, 3)
    assert fencing.accept_rollback(second) is Verdict.ADMIT
    assert fencing.epoch == 3 and fencing.rollbacks == [first, second]


def test_rollback_history_is_bounded_keeping_the_newest() -> None:
    fencing = Fencing(rollbacks_max=2)
    taken = [rollback(TO, epoch) for epoch in range(2, 7)]
    for signed in taken:
        assert fencing.accept_rollback(signed) is Verdict.ADMIT
    assert fencing.rollbacks == taken[-2:]
    assert fencing.epoch == 6


def test_validated_is_taken_when_newer_and_of_the_current_epoch() -> None:
    fencing = Fencing()
    v1 = validated(vector((1, 2), (1, 1), (0, 0)), 1)
    assert fencing.accept_validated(v1)
    assert fencing.validated is v1
    assert not fencing.accept_validated(validated(vector((1, 2), (1, 1), (0, 0)), 1))  # same
    assert not fencing.accept_validated(validated(vector((1, 1), (1, 1), (0, 0)), 1))  # older
    assert not fencing.accept_validated(validated(vector((1, 9), (1, 9), (1, 9)), 2))  # future
    assert fencing.validated is v1
    v2 = validated(vector((1, 3), (1, 1), (0, 0)), 1)
    assert fencing.accept_validated(v2)
    assert fencing.validated is v2

    fencing.accept_rollback(rollback(TO, 2))
    assert not fencing.accept_validated(validated(vector((1, 4), (1, 3), (0, 0)), 1))  # old epoch
    v3 = validated(vector((1, 3), (1, 1), (0, 0)), 2)  # lower than v2 but of the new epoch
    assert fencing.accept_validated(v3)
    assert fencing.validated is v3


def test_control_messages_are_the_rollbacks_in_order_then_the_newest_validated() -> None:
    fencing = Fencing()
    assert fencing.control_messages() == []
    rb2, rb3 = rollback(TO, 2), rollback(TO, 3)
    fencing.accept_rollback(rb2)
    fencing.accept_rollback(rb3)
    assert fencing.control_messages() == [rb2, rb3]
    v3 = validated(TO, 3)
    fencing.accept_validated(v3)
    v3b = validated(vector((3, 1), (1, 3), (0, 0)), 3)
    fencing.accept_validated(v3b)
    assert fencing.control_messages() == [rb2, rb3, v3b]


@pytest.mark.parametrize("epoch", [2, 3])
def test_a_delta_from_a_future_epoch_stays_future_until_its_rollback(epoch: int) -> None:
    fencing = Fencing()
    future = delta((0, epoch, 6))
    for new_epoch in range(2, epoch + 1):
        assert fencing.judge(future) is Verdict.FUTURE
        fencing.accept_rollback(rollback(TO, new_epoch))
    assert fencing.judge(future) is Verdict.ADMIT
