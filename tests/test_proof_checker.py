"""The reliability checker on hand-made data: a clean history passes, and every invariant
reports the violation it exists for (a checker that cannot fail proves nothing). Also the
trainer's journal read back as a record."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from p2prec.core.versions import Version, VersionVector
from p2prec.model.layout import StoreLayout
from p2prec.model.store import ParamStore
from p2prec.proof.checker import (
    check_all,
    check_convergence,
    check_fencing,
    check_monotonic,
    check_rollback,
    check_validated_reads,
    lost_updates,
)
from p2prec.proof.observe import Sample, ValidatedRead
from p2prec.proof.record import (
    Published,
    Record,
    RollbackEntry,
    Validation,
    read_entries,
    read_record,
)
from p2prec.proof.report import ScenarioReport, crashes
from p2prec.proof.scenario import mesh_converged
from p2prec.sim.lineage import generate
from p2prec.trainer.head import StoreHead
from p2prec.trainer.journal import JournalHead
from p2prec.wire.messages import Rollback, Validated


def v(epoch: int, seq: int) -> int:
    return Version(epoch, seq).packed


def history() -> Record:
    """Two shards. Epoch 1 publishes seq 1..3 on both, validates seq 1, and is rolled back to
    it in epoch 2 (root 'r1'), which publishes seq 2 on shard 0 and validates it."""
    deltas = [Published(float(s), 1, {0: v(1, s), 1: v(1, s)}, 4) for s in (1, 2, 3)]
    deltas.append(Published(5.0, 2, {0: v(2, 2)}, 4))
    return Record(
        deltas=deltas,
        validations=[
            Validation(1.5, 1, (v(1, 1), v(1, 1))),
            Validation(5.5, 2, (v(2, 2), v(1, 1))),
        ],
        rollbacks=[RollbackEntry(4.0, 2, (v(1, 1), v(1, 1)), (v(1, 1), v(1, 1)), "r1")],
    )


def node(
    t_s: float, vector: tuple[int, ...], epoch: int, root: str = "x", member: str = "n1"
) -> Sample:
    watermark = (v(1, 1), v(1, 1)) if t_s >= 1.5 else (0, 0)
    return Sample(t_s, member, "node", 100, epoch, root, vector, watermark)


def trainer_final() -> Sample:
    return Sample(9.0, "trainer", "trainer", 1, 2, "end", (v(2, 2), v(1, 1)), (v(2, 2), v(1, 1)))


def clean_samples() -> list[Sample]:
    return [
        node(2.0, (v(1, 2), v(1, 2)), 1),
        node(3.5, (v(1, 3), v(1, 3)), 1),
        node(4.5, (v(1, 1), v(1, 1)), 2, root="r1"),  # rolled back with the rollback
        node(6.0, (v(2, 2), v(1, 1)), 2, root="end"),
    ]


def test_a_clean_history_has_no_violation_and_nothing_lost() -> None:
    record, samples = history(), clean_samples()
    finals = {"n1": samples[-1], "trainer": trainer_final()}
    reads = [ValidatedRead(2.0, "n1", 1, 2), ValidatedRead(6.0, "n1", 2, 3)]
    assert check_all(record, samples, reads, finals, 2.0, 30.0) == []
    assert lost_updates(record, finals) == []


def test_a_version_going_down_without_a_rollback_is_a_violation() -> None:
    record = history()
    down = [node(2.0, (v(1, 2), v(1, 2)), 1), node(2.5, (v(1, 2), v(1, 1)), 1)]
    found = check_monotonic(down, record)
    assert [(x.invariant, x.member) for x in found] == [("monotonic", "n1")]
    assert "shard 1 went from 1.2 to 1.1" in found[0].detail
    # the same drop is a rollback once the node holds the epoch that fenced 1.2
    assert check_monotonic([down[0], node(4.5, (v(1, 2), v(1, 1)), 2)], record) == []


def test_a_version_that_was_never_published_or_is_fenced_is_a_violation() -> None:
    record = history()
    phantom = check_fencing([node(2.0, (v(1, 7), v(1, 1)), 1)], record)
    assert len(phantom) == 1 and "never published" in phantom[0].detail
    kept = check_fencing([node(4.5, (v(1, 3), v(1, 1)), 2)], record)  # accepted epoch 2
    assert len(kept) == 1 and "fenced by the rollback" in kept[0].detail
    # before the node hears of the rollback, holding 1.3 is no violation
    assert check_fencing([node(3.5, (v(1, 3), v(1, 3)), 1)], record) == []


def test_a_node_at_the_rollbacks_head_with_other_content_is_a_violation() -> None:
    record = history()
    found = check_rollback([node(4.5, (v(1, 1), v(1, 1)), 2, root="poisoned")], record)
    assert [x.invariant for x in found] == ["rollback"]
    assert check_rollback([node(4.5, (v(1, 1), v(1, 1)), 2, root="r1")], record) == []


def test_a_watermark_or_validated_read_past_the_validations_is_a_violation() -> None:
    record = history()
    early = Sample(2.0, "n1", "node", 100, 1, "x", (v(1, 2),) * 2, (v(1, 2), v(1, 1)))
    found = check_validated_reads([early], [], record)
    assert len(found) == 1 and "watermark of shard 0 at 1.2" in found[0].detail
    too_new = ValidatedRead(2.0, "n1", 1, 3)  # validated so far: seq 1 + seq 1 = 2 versions
    assert len(check_validated_reads([], [too_new], record)) == 1
    before_any = ValidatedRead(1.0, "n1", 1, 1)
    assert len(check_validated_reads([], [before_any], record)) == 1


def test_a_node_missing_a_published_version_at_the_end_loses_it_unless_fenced() -> None:
    record = history()
    behind = node(9.0, (v(1, 1), v(1, 1)), 2, member="n2")
    lost = lost_updates(record, {"n2": behind, "trainer": trainer_final()})
    assert [(x.member, x.shard, x.version) for x in lost] == [("n2", 0, v(2, 2))]
    # 1.2 and 1.3 were fenced by the rollback: no node needs them


def test_convergence_needs_every_root_equal_within_the_bound() -> None:
    finals = {"n1": node(9.0, (v(2, 2), v(1, 1)), 2, root="other"), "trainer": trainer_final()}
    found = check_convergence(finals, 1.0, 30.0)
    assert [(x.invariant, x.member) for x in found] == [("convergence", "n1")]
    equal = {"n1": node(9.0, (v(2, 2), v(1, 1)), 2, root="end"), "trainer": trainer_final()}
    assert check_convergence(equal, 1.0, 30.0) == []
    assert [x.member for x in check_convergence(equal, None, 30.0)] == ["mesh"]
    assert [x.member for x in check_convergence(equal, 31.0, 30.0)] == ["mesh"]


def test_crashes_are_exits_the_schedule_did_not_cause() -> None:
    restarts = {"n1": 1, "n2": 2, "trainer": 0}
    found = crashes(restarts, Counter({"n1": 1, "n2": 1}), {"n1": True, "n2": True, "n3": False})
    assert found == ["n2: 2 restarts, 1 killed by the schedule", "n3: not running at the end"]
    report = ScenarioReport("s", 7, ["t=1 kill-node n2"], crashes=found)
    assert not report.ok and "P2PREC_CHAOS_SEED=7" in report.text()
    assert "t=1 kill-node n2" in report.text()


def test_the_trainers_journal_reads_back_as_its_record(tmp_path: Path) -> None:
    layout = StoreLayout(row_shards=4, dim=3)
    lineage = generate(layout, seed=5, steps=4)
    store = ParamStore(layout)
    path = tmp_path / "published.jsonl"
    head = JournalHead(StoreHead(store, shard_groups=1), path)
    for delta in lineage.deltas[:2]:
        head.publish(delta)
    head.publish(Validated(store.vector, 1, 0))
    validated_root = store.root.hex()
    for delta in lineage.deltas[2:]:
        head.publish(delta)
    head.publish(Rollback(store.watermark, 2, 0))
    head.close()
    with path.open("ab") as torn:
        torn.write(b'{"kind": "delta", "ep')  # the trainer killed mid-line
    record = read_record(path)
    assert len(read_entries(path)) == 8  # 4 deltas; validated, rollback: each and its head
    assert len(record.deltas) == 4 and len(record.validations) == 1
    (rollback,) = record.rollbacks
    assert rollback.root == validated_root and rollback.new_epoch == 2
    assert VersionVector(list(rollback.to)) == store.vector
    last = lineage.deltas[-1]
    fenced = zip(last.shards, last.versions, strict=True)
    assert all(record.fenced_by(shard, ver) is rollback for shard, ver in fenced)


def test_an_observer_round_samples_fresh_reports_of_current_processes(tmp_path: Path) -> None:
    import os

    import orjson

    from p2prec.localmesh.runfile import write_mesh
    from p2prec.proof.observe import Observer

    members = []
    for member_id, pid in (("trainer", os.getpid()), ("n1", os.getpid()), ("old", 1)):
        directory = tmp_path / member_id
        directory.mkdir()
        status = {"pid": os.getpid(), "epoch": 2, "merkle_root": "ab", "vector": [v(2, 3)],
                  "watermark": [v(2, 1)], "counters": {"applied": 5}}  # fmt: skip
        (directory / "status.json").write_bytes(orjson.dumps(status))
        role = "trainer" if member_id == "trainer" else "node"
        members.append({"id": member_id, "dc": "dc1", "role": role, "pid": pid,
                        "url": None, "data_dir": str(directory)})  # fmt: skip
    write_mesh(tmp_path, {"members": members})
    observer = Observer(tmp_path)
    found = observer.round()
    assert [s.member for s in found] == ["trainer", "n1"]  # 'old': written by another pid
    assert found[1].vector == (v(2, 3),) and found[1].watermark == (v(2, 1),)
    assert found[1].counters == {"applied": 5} and observer.latest()["n1"] is found[1]


def test_convergence_waits_for_a_trainer_status_taken_after_the_pause() -> None:
    """A trainer status older than the pause can equal every node's equally old one: what the
    trainer published after it would then count as lost."""
    trainer = Sample(9.0, "trainer", "trainer", 1, 2, "end", (v(2, 2),), (v(2, 2),))
    held = Sample(9.0, "n1", "node", 100, 2, "end", (v(2, 2),), (v(2, 2),))
    stale = {"trainer": replace(trainer, written_s=4.0), "n1": held}
    fresh = {"trainer": replace(trainer, written_s=6.0), "n1": held}
    assert not mesh_converged(stale, 1, paused_s=5.0)
    assert mesh_converged(fresh, 1, paused_s=5.0)
