"""Written log and snapshot pages leave the page cache (``io/pagecache.py``).

Whether a page is cached is read with ``preadv(..., RWF_NOWAIT)``: it fails with EAGAIN
rather than read a page that is not in the cache.
"""

import os
import threading
from pathlib import Path

import pytest

from p2prec.io import pagecache
from p2prec.io.pagecache import RELEASE_CHUNK_BYTES, AppendRelease
from p2prec.io.persistence import NodeDisk

CHUNK = RELEASE_CHUNK_BYTES
PAGE_BYTES = 4096
DEADLINE_S = 20.0


def cached(path: Path, offset: int) -> bool:
    """Whether the page of ``path`` at ``offset`` is in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(PAGE_BYTES)], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def settle(disk: NodeDisk) -> None:
    """Wait for the advice the log's worker thread may be giving."""
    release = disk._log._release if disk._log is not None else None
    if release is not None and release.pending is not None:
        release.pending.result()


@pytest.fixture
def disk_dir(tmp_path: Path) -> Path:
    """``tmp_path``, where its filesystem drops clean pages on advice (tmpfs keeps them)."""
    probe = tmp_path / "probe"
    probe.write_bytes(bytes(1 << 20))
    try:
        with probe.open("rb+") as handle:
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        observable = not cached(probe, 0)
    except OSError as exc:  # no RWF_NOWAIT on this filesystem
        pytest.skip(f"page-cache residency not readable here: {exc}")
    finally:
        probe.unlink()
    if not observable:
        pytest.skip("this filesystem keeps clean pages on POSIX_FADV_DONTNEED (tmpfs?)")
    return tmp_path


def test_each_chunk_is_advised_when_it_fills_and_while_the_next_two_fill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    advised: list[tuple[int, int]] = []
    monkeypatch.setattr(pagecache, "release", lambda fd, start, n: advised.append((start, n)))
    release = AppendRelease()
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT)
    for end in [100, CHUNK - 1, CHUNK, CHUNK + 5, 2 * CHUNK + 1, 3 * CHUNK, 4 * CHUNK, 7 * CHUNK]:
        release.written(fd, end)
        if release.pending is not None:
            release.pending.result()  # the worker's advice done
    os.close(fd)
    assert [(start // CHUNK, (start + n) // CHUNK) for start, n in advised] == [
        (0, 1),  # the first chunk filled: handed to writeback
        (0, 2),
        (0, 3),  # the first chunk's last advice
        (1, 4),
        (2, 7),  # one large write filled three chunks
    ]


def test_an_advice_waits_while_the_worker_is_on_the_last_and_then_covers_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    advised: list[tuple[int, int]] = []
    busy = threading.Event()

    def slow_release(fd: int, start: int, nbytes: int) -> None:
        busy.wait(DEADLINE_S)
        advised.append((start, nbytes))

    monkeypatch.setattr(pagecache, "release", slow_release)
    release = AppendRelease()
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT)
    release.written(fd, CHUNK)
    first = release.pending
    release.written(fd, 2 * CHUNK)  # the worker is still on the first chunk: not now
    assert release.pending is first and release.advised_to == CHUNK
    busy.set()
    assert first is not None
    first.result()
    release.written(fd, 2 * CHUNK + 1)
    assert release.pending is not first and release.pending is not None
    release.pending.result()
    os.close(fd)
    assert advised == [(0, CHUNK), (0, 2 * CHUNK)]


@pytest.mark.parametrize("release_pages", [True, False])
def test_a_log_leaves_the_page_cache_two_chunks_behind_its_end(
    disk_dir: Path, release_pages: bool
) -> None:
    disk = NodeDisk(disk_dir, fsync=False, release_pages=release_pages)
    record = [b"delta", bytes(1 << 20)]
    for _ in range(4 * CHUNK >> 20):
        disk.append(record)
        settle(disk)
    assert disk._log is not None
    os.fsync(disk._log.fd)  # every chunk so far written back: the next advice drops them
    for _ in range(CHUNK >> 20):
        disk.append(record)
        settle(disk)
    (path,) = (disk_dir / "log").glob("*.log")
    end = disk._log.offset
    assert [cached(path, at) for at in (2 * CHUNK, 3 * CHUNK + 9)] == [not release_pages] * 2
    assert cached(path, end - 1)  # the chunk being filled stays
    disk.close()


@pytest.mark.parametrize("release_pages", [True, False])
def test_a_snapshot_leaves_the_page_cache_once_written(disk_dir: Path, release_pages: bool) -> None:
    disk = NodeDisk(disk_dir, release_pages=release_pages)
    disk.write_shard(0, [b"head", bytes(4 << 20)])
    path = disk_dir / "shards" / "0.snap"
    assert [cached(path, at) for at in (0, 4 << 20)] == [not release_pages] * 2
    assert path.read_bytes()[4:] == bytes(4 << 20)  # read back whole from the disk
