"""A log segment written inside space allocated ahead (no size change per append)."""

import errno
import os
from pathlib import Path

import pytest

from p2prec.io.persistence import NodeDisk
from p2prec.io.segment import PREALLOC_BYTES, LogSegment, _skip


def test_appends_stay_inside_the_allocated_space_and_replay_stops_at_its_zeros(
    tmp_path: Path,
) -> None:
    disk = NodeDisk(tmp_path, fsync=False)
    records = [[b"head-%d" % i, bytes(1000 + i)] for i in range(50)]
    for frames in records:
        disk.append(frames)
    (path,) = (tmp_path / "log").glob("*.log")
    assert path.stat().st_size == PREALLOC_BYTES  # no append changed the file's size
    assert [list(map(bytes, r)) for r in NodeDisk(tmp_path).replay()] == records
    disk.close()
    assert path.stat().st_size < PREALLOC_BYTES  # the allocated tail trimmed
    assert [list(map(bytes, r)) for r in NodeDisk(tmp_path).replay()] == records


def test_a_record_larger_than_the_allocation_step_is_written_whole(tmp_path: Path) -> None:
    disk = NodeDisk(tmp_path, fsync=False)
    big = bytes(range(256)) * (PREALLOC_BYTES // 256 + 7)
    disk.append([b"small", b"x"])
    disk.append([b"big", big])
    disk.append([b"after", b"y"])
    replayed = [list(map(bytes, r)) for r in NodeDisk(tmp_path).replay()]
    assert replayed == [[b"small", b"x"], [b"big", big], [b"after", b"y"]]


@pytest.mark.parametrize(("code", "tries_again"), [(errno.EOPNOTSUPP, False), (errno.ENOSPC, True)])
def test_without_fallocate_appends_extend_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, tries_again: bool
) -> None:
    calls = []

    def failing(fd: int, offset: int, length: int) -> None:
        calls.append(offset)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", failing)
    log = LogSegment(tmp_path / "0.log", b"MAGIC")
    log.write([b"abc", memoryview(b"defg")])
    assert os.path.getsize(tmp_path / "0.log") == len(b"MAGICabcdefg")
    log.close()
    assert (tmp_path / "0.log").read_bytes() == b"MAGICabcdefg"
    assert len(calls) == (2 if tries_again else 1)  # a full disk may have room later


def test_skip_drops_whole_and_partial_views() -> None:
    views = [memoryview(b"abc"), memoryview(b"de"), memoryview(b"fgh")]
    assert [bytes(v) for v in _skip(views, 0)] == [b"abc", b"de", b"fgh"]
    assert [bytes(v) for v in _skip(views, 4)] == [b"e", b"fgh"]
    assert [bytes(v) for v in _skip(views, 5)] == [b"fgh"]
    assert _skip(views, 8) == []
