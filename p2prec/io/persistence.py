"""A node's state on local disk: per-shard snapshots plus the signed messages applied since.

Layout of ``data_dir``::

    shards/<shard>.snap    canonical shard snapshots (model/snapshot.py), replaced atomically
    control.log            the signed rollbacks and the newest validation (fencing state)
    log/<segment>.log      every signed message (delta, validated, rollback) applied since the
                           snapshots, as its original frames, in the order it was applied
                           (written into space allocated ahead: ``io/segment.py``)

A restarted node restores the snapshots, then replays the log through the same code path that
applies messages from peers (signatures verified again), so it serves at once from disk and
fetches only what changed while it was down. A checkpoint writes the shards changed since the
last one, starts a new log segment and deletes the segments the snapshots now cover. The
driver does the same in steps off the event loop (``rotate``, ``write_shard``, ``drop``).
Torn writes at the tail of a log (a crash mid-append) are detected and ignored.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from p2prec.io.pagecache import release
from p2prec.io.segment import FrameBytes, LogSegment
from p2prec.model.snapshot import SnapshotError, restore_shard, snapshot_shards
from p2prec.model.store import ParamStore

_COUNT = struct.Struct("<I")
_LEN = struct.Struct("<Q")
_MAGIC = b"P2PLOG1\n"


class DiskError(RuntimeError):
    """The data directory cannot be used (permissions, a corrupt snapshot of this layout)."""


class NodeDisk:
    """Snapshots and the message log of one node (see module docstring)."""

    def __init__(
        self, data_dir: str | os.PathLike[str], fsync: bool = True, release_pages: bool = True
    ) -> None:
        self.root = Path(data_dir)
        self.fsync = fsync
        self.release_pages = release_pages  # written files leave the page cache: pagecache.py
        self.shard_dir = self.root / "shards"
        self.log_dir = self.root / "log"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.shard_dir.glob("*.tmp"):  # a writer died mid-write
            stale.unlink(missing_ok=True)
        self._segment = self._last_segment() + 1
        self._log: LogSegment | None = None
        self.bytes_logged = 0

    # -- the message log ---------------------------------------------------------------------

    def append(self, frames: Sequence[FrameBytes]) -> None:
        """Log one applied signed message (its frames, as received)."""
        if self._log is None:
            path = self.log_dir / f"{self._segment:012d}.log"
            self._log = LogSegment(path, _MAGIC, self.release_pages)
        # In the OS when it returns: a SIGKILL must not take back what was applied.
        self.bytes_logged += self._log.write(_record_parts(frames))

    def flush(self) -> None:
        if self._log is not None and self.fsync:
            self._log.fsync()

    def replay(self) -> Iterator[list[bytes]]:
        """Every logged message in order (a torn record at the end of a segment is skipped)."""
        for path in sorted(self.log_dir.glob("*.log"), key=_segment_number):
            yield from _read_segment(path)

    # -- snapshots and checkpoints -----------------------------------------------------------

    def checkpoint(self, store: ParamStore, shards: Sequence[int]) -> None:
        """Write ``shards`` (those changed since the last checkpoint) and drop covered logs.

        Every shard changed since the previous checkpoint must be in ``shards``: the logs
        that are deleted held the only other copy of those changes."""
        for shard, snapshot in snapshot_shards(store, shards):
            self.write_shard(shard, [snapshot])
        self.drop(self.rotate())

    def rotate(self) -> list[Path]:
        """Start a new log segment; returns the older segments. They may be ``drop``-ped once
        every shard changed up to now has been written with ``write_shard``."""
        if self._log is not None:
            # No fsync and no trim of the allocated tail (a metadata change on the loop):
            # these segments are deleted once the snapshots are written.
            self._log.close(trim=False)
            self._log = None
        old = sorted(self.log_dir.glob("*.log"), key=_segment_number)
        self._segment = self._last_segment() + 1
        return old

    def write_shard(self, shard: int, parts: Sequence[FrameBytes]) -> None:
        """Replace one shard's snapshot, given as the parts it joins, atomically (safe to call
        from a worker thread while nothing else changes the parts)."""
        _write_atomic(self.shard_dir / f"{shard}.snap", parts, self.fsync, self.release_pages)

    @staticmethod
    def drop(segments: Sequence[Path]) -> None:
        """Delete log segments that snapshots now cover (see ``rotate``)."""
        for path in segments:
            path.unlink(missing_ok=True)

    def save_control(self, messages: Sequence[Sequence[FrameBytes]]) -> None:
        """Keep the signed rollbacks and newest validation (fencing survives a restart)."""
        records = [_MAGIC] + [_record(frames) for frames in messages]
        _write_atomic(self.root / "control.log", records, self.fsync, self.release_pages)

    def load_control(self) -> list[list[bytes]]:
        path = self.root / "control.log"
        return list(_read_segment(path)) if path.exists() else []

    def load_snapshots(self, store: ParamStore) -> list[int]:
        """Restore every shard snapshot on disk into ``store``; returns the shards restored."""
        restored = []
        for path in sorted(self.shard_dir.glob("*.snap")):
            try:
                restored.append(restore_shard(store, path.read_bytes()))
            except SnapshotError as exc:
                raise DiskError(f"{path}: {exc}") from None
        return restored

    def close(self) -> None:
        self.flush()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- files ---------------------------------------------------------------------------------

    def _last_segment(self) -> int:
        numbers = [_segment_number(p) for p in self.log_dir.glob("*.log")]
        return max(numbers, default=0)


def _record(frames: Sequence[FrameBytes]) -> bytes:
    return b"".join(_record_parts(frames))


def _record_parts(frames: Sequence[FrameBytes]) -> list[FrameBytes]:
    """A log record: its size, the frame count, then each frame's size and bytes."""
    parts: list[FrameBytes] = [_COUNT.pack(len(frames))]
    for frame in frames:
        view = memoryview(frame)
        parts += [_LEN.pack(view.nbytes), view]
    size = sum(memoryview(p).nbytes for p in parts)
    return [_LEN.pack(size), *parts]


def _segment_number(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        return -1


def _read_segment(path: Path) -> Iterator[list[bytes]]:
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        return
    offset = len(_MAGIC)
    while offset + _LEN.size <= len(data):
        (size,) = _LEN.unpack_from(data, offset)
        record = data[offset + _LEN.size : offset + _LEN.size + size]
        if len(record) < size:
            return  # torn tail: the crash came mid-append
        frames = _parse_record(record)
        if frames is None:
            return
        yield frames
        offset += _LEN.size + size


def _parse_record(record: bytes) -> list[bytes] | None:
    if len(record) < _COUNT.size:
        return None
    (count,) = _COUNT.unpack_from(record, 0)
    offset, frames = _COUNT.size, []
    for _ in range(count):
        if offset + _LEN.size > len(record):
            return None
        (size,) = _LEN.unpack_from(record, offset)
        offset += _LEN.size
        if offset + size > len(record):
            return None
        frames.append(record[offset : offset + size])
        offset += size
    return frames if offset == len(record) else None


def _write_atomic(
    path: Path, parts: Sequence[FrameBytes], fsync: bool, release_pages: bool
) -> None:
    # A name of its own per writer thread: two writers never share a temporary file.
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as handle:
        for part in parts:  # no join: a shard's parts are megabytes
            handle.write(part)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
        if release_pages:  # after the fsync: all of it clean, all of it dropped
            release(handle.fileno())
    os.replace(tmp, path)
