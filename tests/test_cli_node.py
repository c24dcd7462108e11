"""`p2prec node` runs one member as a real process and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2prec.cli import main
from p2prec.io.heap import glibc_mallopt


@pytest.mark.parametrize("role", ["trainer", "node"])
def test_node_process_starts_and_stops_on_sigterm(tmp_path: Path, role: str) -> None:
    """...and a node's replication threads run below its serving thread, a publisher's not
    (its replication is the root of every delta's path: ``cli._queries_first``)."""
    settings = [
        "--set",
        f"keys.curve_dir={tmp_path / 'curve'}",
        "--set",
        f"keys.trainer_public_key={tmp_path / 'trainer.pub'}",
        "--set",
        f"keys.trainer_signing_key={tmp_path / 'trainer.key'}",
    ]
    assert main(["keygen", *settings]) == 0
    assert main(["keygen", *settings, "--curve", role]) == 0
    cmd = [
        sys.executable,
        "-m",
        "p2prec.cli",
        "node",
        "--config",
        "local",
        *settings,
        "--set",
        f"node.id={role}",
        "--set",
        f"node.role={role}",
        "--set",
        "log.format=json",
        "--set",
        "log.level=debug",
        "--set",
        f"node.data_dir={tmp_path / 'state'}",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while not lines or '"node_started"' not in lines[-1]:
            assert time.monotonic() < deadline, "no node_started"
            lines.append(proc.stderr.readline())
            assert lines[-1] or proc.poll() is None, "the node exited early"
        heap = [line for line in lines if '"heap_kept"' in line]
        if glibc_mallopt() is not None:  # freed memory kept for reuse (io/heap.py)
            assert heap and '"applied":true' in heap[0], heap
        os.kill(proc.pid, signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]  # drains the debug lines while it stops
        assert proc.returncode == 0
        lowered = '"replication_threads_lowered"' in "".join(lines) + rest
        assert lowered == (role == "node")
        assert (tmp_path / "state" / "shards").is_dir()  # checkpointed on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
