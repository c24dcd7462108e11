"""The shard snapshots of one checkpoint, built in batches of bounded bytes from one scan.

A checkpoint rewrites every shard changed since the last one: with random writes, the whole
store. The driver builds the snapshots on the event loop a batch per turn and writes each batch
in a worker thread. ``CheckpointSnapshots`` reads the rows through one index scan taken in
steps when the checkpoint begins (``ScanJob``: at once, it held a loaded node's loop 130-400
ms; a scan per batch cost a pass over every table's whole index each time: ~10% of a loaded
node's CPU), and scans again only when the store freed rows the scan points at (a validation
released undo, a rollback or restored shard rewrote the store). Snapshots read after such a
rescan hold more, never less, which is what a checkpoint needs: the log segments it drops end
where it began.
"""

from __future__ import annotations

from collections.abc import Sequence

from p2prec.model.scan import ScanJob, ScanVoided, ShardScan
from p2prec.model.snapshot import Part, parts_nbytes, scanned_snapshot_parts, snapshot_shards
from p2prec.model.store import ParamStore

STEP_BYTES = 4 << 20  # snapshot bytes built per loop turn (copying 4 MiB takes ~1 ms)
Batch = list[tuple[int, list[Part]]]


class CheckpointSnapshots:
    """The snapshots of ``shards``, as of now or later, in batches of about ``step_bytes``."""

    def __init__(self, store: ParamStore, shards: Sequence[int], step_bytes: int = STEP_BYTES):
        self.store = store
        self.step_bytes = step_bytes
        dense = store.layout.dense_shard
        self._dense = [s for s in shards if s == dense]
        self.pending = [s for s in shards if s != dense]
        self._scan: ShardScan | None = None
        self._job: ScanJob | None = None
        self.scans = 0  # scans begun
        if self.pending:
            self._rescan()

    @property
    def done(self) -> bool:
        return not self.pending and not self._dense

    def next_batch(self) -> Batch:
        """The next snapshots, about ``step_bytes`` of them (none while a step of the scan
        took the turn), all built here: ``take_dense``, ``build_rows`` and ``confirm``. Their
        parts are views of fresh arrays or bytes: a worker thread may write them meanwhile."""
        return self.take_dense() + self.confirm(self.build_rows())

    def take_dense(self) -> Batch:
        """The dense shard's snapshot while it is still to write (on the event loop: its
        parts view the live tensors, joined here into a copy)."""
        batch: Batch = [(s, [data]) for s, data in snapshot_shards(self.store, self._dense)]
        self._dense = []
        return batch

    def build_rows(self) -> Batch:
        """A step of the index scan (nothing built), or the snapshots of about ``step_bytes``
        of row shards. May run in a worker thread while the event loop applies deltas (the
        node does so: a loaded node's loop spent ~5-19 ms per batch building them): it reads
        the index and the slots the scan found, which a write never changes (new rows go to
        fresh slots) and which are freed only by releasing undo past the scan's versions, a
        rollback or a restored shard. ``confirm``, on the loop, then finds out."""
        if self._scan is None:
            assert self._job is not None
            self._scan = self._job.step_off_loop()
            return []
        batch: Batch = []
        nbytes = 0
        while self.pending and nbytes < self.step_bytes:
            shard = self.pending[0]
            if not self._scan.readable(self.store, shard):
                break  # confirm begins a new scan
            self.pending.pop(0)
            parts = scanned_snapshot_parts(self.store, self._scan, shard)
            batch.append((shard, parts))
            nbytes += parts_nbytes(parts)
        return batch

    def confirm(self, built: Batch) -> Batch:
        """On the event loop, after ``build_rows``: the snapshots whose rows were still in
        their slots once built. The others go back to ``pending`` and a new scan begins (its
        snapshots hold more, never less), as when an index grew under the scan (a slice
        read meanwhile may have missed keys) or the next shard is no longer readable."""
        if self._job is None:
            return built  # no row shard to write
        if self._scan is None:  # a step of the scan: nothing built
            try:
                self._job.confirm_step()
            except ScanVoided:
                self._rescan()
            return built
        scan, grown = self._scan, self._job.grown()
        intact = {s: not grown and scan.readable(self.store, s) for s, _ in built}
        kept = [(s, p) for s, p in built if intact[s]]
        lost = [s for s, _ in built if not intact[s]]
        stale = bool(self.pending) and not scan.readable(self.store, self.pending[0])
        if lost or stale or grown:
            self.pending = lost + self.pending
            self._rescan()
        return kept

    def _rescan(self) -> None:
        self._job, self._scan = ScanJob(self.store, self.pending), None
        self.scans += 1
