"""Turns at a shared resource for the members of one host, as flocks on files of a directory.

Members on one host checkpointing together held both its cores: in one benchmark run the worst
deltas fell while five members and the trainer rewrote their stores at once. ``HostTurns``
lets at most ``count`` of the members that share ``directory`` hold a turn at a time: a turn is
an exclusive ``flock`` on one of ``count`` files there, taken without waiting (the caller tries
again later) and released on ``release``, on ``close`` or by the kernel when the process dies,
so a crashed member never keeps one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class HostTurns:
    """At most ``count`` turns at a time among the processes sharing ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], count: int) -> None:
        if count < 1:
            raise ValueError(f"turns: count must be at least 1, got {count}")
        self.directory = Path(directory)
        self.count = count
        self._held: int | None = None  # the fd of the turn file this process holds

    @property
    def held(self) -> bool:
        return self._held is not None

    def try_take(self) -> bool:
        """Take a free turn now, or return False (all ``count`` are held by others)."""
        if self._held is not None:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        for turn in range(self.count):
            fd = os.open(self.directory / f"turn-{turn}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held = fd
            return True
        return False

    def release(self) -> None:
        if self._held is not None:
            fd, self._held = self._held, None
            os.close(fd)  # closing the last fd of the open file drops its flock

    close = release
