"""HostTurns: at most ``count`` turns among the processes sharing a directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from p2prec.io.turns import HostTurns


def test_at_most_count_turns_are_held_and_a_released_one_is_taken_again(tmp_path: Path) -> None:
    a, b, c = (HostTurns(tmp_path / "turns", 2) for _ in range(3))
    assert a.try_take() and b.try_take()
    assert not c.try_take()
    assert [t.held for t in (a, b, c)] == [True, True, False]
    assert a.try_take()  # holding one already: still held, no second one taken
    a.release()
    a.release()  # idempotent
    assert c.try_take()
    assert [t.held for t in (a, b, c)] == [False, True, True]
    assert not a.try_take()
    b.close()
    c.close()
    assert a.try_take()


def test_the_turn_of_a_killed_process_is_free_again(tmp_path: Path) -> None:
    """The kernel drops a dead process's flock: a crashed member never keeps a turn."""
    command = (
        "import sys; from p2prec.io.turns import HostTurns; "
        f"t = HostTurns({str(tmp_path)!r}, 1); print(t.try_take(), flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "True"
            mine = HostTurns(tmp_path, 1)
            assert not mine.try_take()
        finally:
            holder.kill()  # by its pid: the process this test started
            holder.wait(timeout=30)
        assert mine.try_take()


def test_a_count_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HostTurns(tmp_path, 0)
