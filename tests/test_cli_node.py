"""`p2prec node` runs one member as a real process and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from p2prec.cli import main
from p2prec.io.curve import generate_node_keys
from p2prec.io.heap import glibc_mallopt

DEADLINE_S = 30.0


@contextmanager
def member_process(tmp_path: Path, role: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """A `p2prec node` process of ``role`` (json logs at debug level) and its stderr lines up
    to ``node_started``; killed on the way out if it still runs."""
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
    cmd = [sys.executable, "-m", "p2prec.cli", "node", "--config", "local", *settings]
    for setting in (f"node.id={role}", f"node.role={role}", "log.format=json", "log.level=debug"):
        cmd += ["--set", setting]
    cmd += ["--set", f"node.data_dir={tmp_path / 'state'}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        yield proc, read_until(proc, '"node_started"')
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """Stderr lines up to the first holding ``marker`` (a deadline for the process to log it)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + DEADLINE_S
    lines: list[str] = []
    while not lines or marker not in lines[-1]:
        assert time.monotonic() < deadline, f"no {marker}"
        lines.append(proc.stderr.readline())
        assert lines[-1] or proc.poll() is None, "the node exited early"
    return lines


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then the rest of its stderr; it exits 0."""
    os.kill(proc.pid, signal.SIGTERM)
    rest = proc.communicate(timeout=DEADLINE_S)[1]  # drains the debug lines while it stops
    assert proc.returncode == 0
    return rest


@pytest.mark.parametrize("role", ["trainer", "node"])
def test_node_process_starts_and_stops_on_sigterm(tmp_path: Path, role: str) -> None:
    """...and a node's replication threads run below its serving thread, a publisher's not
    (its replication is the root of every delta's path: ``cli._queries_first``)."""
    with member_process(tmp_path, role) as (proc, lines):
        heap = [line for line in lines if '"heap_kept"' in line]
        if glibc_mallopt() is not None:  # freed memory kept for reuse (io/heap.py)
            assert heap and '"applied":true' in heap[0], heap
        rest = stop(proc)
        assert (tmp_path / "state" / "shards").is_dir()  # checkpointed on the way out
    lowered = '"replication_threads_lowered"' in "".join(lines) + rest
    assert lowered == (role == "node")


def test_sighup_reloads_the_allow_list_and_keeps_it_when_a_certificate_is_bad(
    tmp_path: Path,
) -> None:
    """A member added to ``keys.curve_dir`` after the start is allowed once the node gets
    SIGHUP; a bad certificate there is logged and the list in force stays, the node runs on."""
    with member_process(tmp_path, "node") as (proc, lines):
        started = next(orjson.loads(line) for line in lines if '"transport_started"' in line)
        generate_node_keys(tmp_path / "curve", "late-joiner")
        os.kill(proc.pid, signal.SIGHUP)
        reloaded = orjson.loads(read_until(proc, '"allow_list_re')[-1])
        assert reloaded["event"] == "allow_list_reloaded"
        assert reloaded["allowed"] == started["allowed"] + 1
        (tmp_path / "curve" / "broken.key").write_text("not a certificate\n")
        os.kill(proc.pid, signal.SIGHUP)
        failed = orjson.loads(read_until(proc, '"allow_list_re')[-1])
        assert failed["event"] == "allow_list_reload_failed" and "broken.key" in failed["error"]
        assert proc.poll() is None
        stop(proc)
