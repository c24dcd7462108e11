"""One open segment of a node's message log, written inside space allocated ahead.

An append that extends a file changes its size: on ext4 that joins the running journal
transaction, and while another thread's fsync commits it (a checkpoint's snapshots) the
append waited up to 13 ms on the event loop (measured; writes into space allocated with
``posix_fallocate`` waited at most 0.16 ms under the same fsyncs). So a segment allocates
``PREALLOC_BYTES`` at a time and writes each record at its offset with ``pwritev`` (no join
of the frames either). The allocated tail reads as zeros, which end a replay like a torn
record does (a record's size is never 0); ``close`` trims it. What is written leaves the page
cache a chunk at a time (``io/pagecache.py``) unless the segment is told to keep it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from p2prec.io.pagecache import AppendRelease

FrameBytes = bytes | memoryview
PREALLOC_BYTES = 16 << 20  # log space allocated ahead at a time
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


class LogSegment:
    """A log segment file open for appends (see module docstring)."""

    def __init__(self, path: Path, header: bytes, release_pages: bool = True) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        self.offset = os.fstat(self.fd).st_size  # a new segment: 0
        self.allocated = self.offset
        self._can_preallocate = True
        self._release = AppendRelease() if release_pages else None
        if self.offset == 0:
            self.write([header])

    def write(self, parts: Sequence[FrameBytes]) -> int:
        """Write ``parts`` at the end of what was written; returns the bytes written. They
        are in the OS when it returns: a SIGKILL cannot take them back."""
        size = sum(memoryview(p).nbytes for p in parts)
        if self.offset + size > self.allocated:
            self._allocate(max(PREALLOC_BYTES, size))
        views = [memoryview(p).cast("B") for p in parts]
        written = 0
        while written < size:  # pwritev may write less than asked
            done = os.pwritev(self.fd, views, self.offset + written)
            written += done
            views = _skip(views, done)
        self.offset += size
        if self._release is not None:
            self._release.written(self.fd, self.offset)
        return size

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self, trim: bool = True) -> None:
        """Close, trimming the allocated tail unless ``trim`` is false (it reads as zeros)."""
        if trim and self.allocated > self.offset:
            os.ftruncate(self.fd, self.offset)
        os.close(self.fd)

    def _allocate(self, nbytes: int) -> None:
        if self._can_preallocate:
            try:
                os.posix_fallocate(self.fd, self.allocated, nbytes)
            except OSError as exc:  # plain appends that extend the file
                # A filesystem without it: never again. A full disk: the write will say so.
                self._can_preallocate = exc.errno not in _UNSUPPORTED
                return
            self.allocated += nbytes


def _skip(views: list[memoryview], nbytes: int) -> list[memoryview]:
    """``views`` without their first ``nbytes`` bytes."""
    while views and nbytes >= views[0].nbytes:
        nbytes -= views[0].nbytes
        views = views[1:]
    if views and nbytes:
        views = [views[0][nbytes:], *views[1:]]
    return views
