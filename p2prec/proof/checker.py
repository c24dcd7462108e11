"""The invariants of DESIGN.md section 2, checked from data: the trainer's ``Record`` of what it
published and the ``Sample``s of what members reported. Pure: no clock, no I/O.

- convergence: after heal and quiesce every live node holds the trainer's vector and root, and
  got there within the bound;
- monotonic: a node's version of a shard never goes down between two samples, except to undo a
  version that a rollback the node has accepted (its epoch rose to it) fenced;
- fencing: a node never reports a version the trainer never published, nor one fenced by a
  rollback whose epoch the node already holds;
- rollback: a node whose vector equals the head a rollback left holds that head's root;
- validated reads: a node's watermark never names a version newer than the validations
  published by then, nor does a ``consistency=validated`` answer read more versions;
- lost updates: every published version no rollback fenced is in every node's final vector.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from p2prec.core.versions import SEQ_MAX
from p2prec.proof.observe import Sample, ValidatedRead
from p2prec.proof.record import Record, epoch_of


@dataclass(frozen=True)
class Violation:
    invariant: str
    member: str
    detail: str

    def line(self) -> str:
        return f"{self.invariant}: {self.member}: {self.detail}"


@dataclass(frozen=True)
class Lost:
    """A published, unfenced version of ``shard`` that ``member`` does not hold at the end."""

    member: str
    shard: int
    version: int
    held: int


def _v(packed: int) -> str:
    return f"{epoch_of(packed)}.{packed & SEQ_MAX}"


def by_member(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.t_s):
        out.setdefault(sample.member, []).append(sample)
    return out


# --- convergence ----------------------------------------------------------------------------


def check_convergence(
    finals: dict[str, Sample], converge_s: float | None, bound_s: float
) -> list[Violation]:
    """``finals``: each member's last sample after quiesce, the trainer's included."""
    trainer = next((s for s in finals.values() if s.role == "trainer"), None)
    if trainer is None:
        return [Violation("convergence", "trainer", "no final report from the trainer")]
    out = []
    if converge_s is None or converge_s > bound_s:
        out.append(Violation("convergence", "mesh", f"not converged within {bound_s:.0f} s"))
    for sample in finals.values():
        if sample.role != "node":
            continue
        if sample.vector != trainer.vector or sample.root != trainer.root:
            detail = f"root {sample.root[:12]} != trainer's {trainer.root[:12]}"
            out.append(Violation("convergence", sample.member, detail))
    return out


# --- monotonic, fencing, rollback -----------------------------------------------------------


def check_monotonic(samples: Iterable[Sample], record: Record) -> list[Violation]:
    out = []
    for member, series in by_member(s for s in samples if s.role == "node").items():
        for before, after in itertools.pairwise(series):
            out += _went_down(member, before, after, record)
    return out


def _went_down(member: str, before: Sample, after: Sample, record: Record) -> list[Violation]:
    out = []
    for shard, (old, new) in enumerate(zip(before.vector, after.vector, strict=True)):
        if new >= old:
            continue
        rollback = record.fenced_by(shard, old)
        if rollback is None or rollback.new_epoch > after.epoch:
            detail = f"shard {shard} went from {_v(old)} to {_v(new)} without a rollback"
            out.append(Violation("monotonic", member, detail))
    return out


def check_fencing(samples: Iterable[Sample], record: Record) -> list[Violation]:
    published = record.published_versions()
    out, seen = [], set()
    for sample in samples:
        if sample.role != "node":
            continue
        for shard, version in enumerate(sample.vector):
            if version == 0 or (sample.member, shard, version) in seen:
                continue
            problem = _fencing_problem(shard, version, sample.epoch, published, record)
            if problem:
                seen.add((sample.member, shard, version))
                out.append(Violation("fencing", sample.member, problem))
    return out


def _fencing_problem(
    shard: int, version: int, epoch: int, published: dict[int, set[int]], record: Record
) -> str:
    if version not in published.get(shard, set()):
        return f"shard {shard} at {_v(version)}, a version the trainer never published"
    rollback = record.fenced_by(shard, version)
    if rollback is not None and rollback.new_epoch <= epoch:
        return (
            f"shard {shard} still at {_v(version)} in epoch {epoch}, fenced by the rollback "
            f"to {_v(rollback.to[shard])} into epoch {rollback.new_epoch}"
        )
    return ""


def check_rollback(samples: Iterable[Sample], record: Record) -> list[Violation]:
    """A node at exactly the vector a rollback left must hold exactly its content."""
    heads = {(r.vector, r.root) for r in record.rollbacks if r.vector is not None}
    out = []
    for sample in samples:
        for vector, root in heads:
            if sample.role == "node" and sample.vector == vector and sample.root != root:
                detail = f"at the rollback's head but root {sample.root[:12]} != {root!s:.12}"
                out.append(Violation("rollback", sample.member, detail))
    return out


# --- validated reads ------------------------------------------------------------------------


def check_validated_reads(
    samples: Iterable[Sample], reads: Iterable[ValidatedRead], record: Record
) -> list[Violation]:
    out = []
    for sample in samples:
        if sample.role == "node":
            out += _watermark_problems(sample, record)
    for read in reads:
        bound = record.validated_total_bound(read.t_s)
        if read.total_versions > bound:
            detail = f"validated read of {read.total_versions} versions, validated at most {bound}"
            out.append(Violation("validated-reads", read.member, detail))
    return out


def _watermark_problems(sample: Sample, record: Record) -> list[Violation]:
    bounds = record.watermark_bounds(sample.t_s)
    for shard, mark in enumerate(sample.watermark):
        bound = 0 if bounds is None else bounds[shard]
        if mark > bound:
            detail = f"watermark of shard {shard} at {_v(mark)}, validated only to {_v(bound)}"
            return [Violation("validated-reads", sample.member, detail)]
    return []


# --- lost updates ---------------------------------------------------------------------------


def lost_updates(record: Record, finals: dict[str, Sample]) -> list[Lost]:
    """Every (member, shard, version) published, never fenced, and missing at the end."""
    out = []
    for shard, versions in sorted(record.published_versions().items()):
        live = sorted(v for v in versions if record.fenced_by(shard, v) is None)
        for sample in finals.values():
            held = sample.vector[shard] if shard < len(sample.vector) else 0
            missing = live[bisect.bisect_right(live, held) :]
            out += [Lost(sample.member, shard, v, held) for v in missing]
    return out


def check_all(
    record: Record,
    samples: list[Sample],
    reads: list[ValidatedRead],
    finals: dict[str, Sample],
    converge_s: float | None,
    converge_bound_s: float,
) -> list[Violation]:
    return [
        *check_convergence(finals, converge_s, converge_bound_s),
        *check_monotonic(samples, record),
        *check_fencing(samples, record),
        *check_rollback(samples, record),
        *check_validated_reads(samples, reads, record),
    ]
