"""Written file data leaves the page cache once it is on its way to disk.

A node reads its log and its snapshots back only when it restarts. Left in the page cache,
they grew by the log's rate until memory was full: 175 MB/s across 13 members of one host in a
72 s ``mesh_procs_bench`` run (14 MB/s per member at 50 deltas/s of 1,000 rows), 11.5 GB by
the end. From about the 30th second the kernel's share of the host's CPU rose from 12% to
30-48%: each new page costs a fault, and in a VM that reports freed memory to its host, one
there too (``heap.py``: 2.3 s per GiB). Released, the cache stayed at 1.2-1.4 GB and the
kernel's share at 10-18%. PostgreSQL advises its WAL segments out of the cache in the same way.

``POSIX_FADV_DONTNEED`` hands a range's dirty pages to writeback and drops its clean ones;
pages still dirty or under writeback stay. So an append-only file is advised a chunk at a
time: each chunk when it fills (handed to writeback), and again while the next two fill
(dropped, once written back). Handing 8 MiB to writeback took 0.9 ms of wall time at the
median, 7.7 ms at p90 and up to 42 ms in that run, so a log's advice runs on a worker thread of
its own, on a duplicate of the file's descriptor (the log may close the file meanwhile).
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future

from p2prec.io.priority import background_executor

RELEASE_CHUNK_BYTES = 8 << 20  # an append-only file is advised this much at a time
_ADVISED_AGAIN_CHUNKS = 2  # a chunk is advised again while this many after it fill
# The process's one thread that advises logs' pages away, started at its first task (from
# the thread that appends, whose CPU priority it inherits).
_WORKER = background_executor("pagecache", idle=False)


def release(fd: int, offset: int = 0, nbytes: int = 0) -> None:
    """Hand ``nbytes`` of ``fd`` from ``offset`` (0: to the end) to writeback and drop what of
    them is clean from the page cache. Advice only: a no-op where the platform has no
    ``posix_fadvise`` or the file refuses it."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)


def _release_and_close(fd: int, offset: int, nbytes: int) -> None:
    try:
        release(fd, offset, nbytes)
    finally:
        os.close(fd)


class AppendRelease:
    """Releases the pages of an append-only file as it grows (see module docstring)."""

    def __init__(self, chunk_bytes: int = RELEASE_CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self.advised_to = 0  # the end of the last chunk advised
        self.pending: Future[None] | None = None  # the advice the worker has not finished

    def written(self, fd: int, end: int) -> None:
        """``fd`` now holds ``end`` bytes: once another chunk has filled, have the worker
        advise it and the chunks before it that are advised again. While the worker is still
        on the last advice, the next waits for a later call (it covers what was skipped)."""
        filled_to = end - end % self.chunk_bytes
        if filled_to <= self.advised_to or (self.pending is not None and not self.pending.done()):
            return
        start = max(0, self.advised_to - _ADVISED_AGAIN_CHUNKS * self.chunk_bytes)
        self.advised_to, dup = filled_to, os.dup(fd)
        try:
            self.pending = _WORKER.submit(_release_and_close, dup, start, filled_to - start)
        except RuntimeError:  # the interpreter is shutting down: no worker any more
            _release_and_close(dup, start, filled_to - start)
