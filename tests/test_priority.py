"""Thread priorities of a node process (``p2prec.io.priority``), checked in a child process:
lowering threads of the test process itself would slow every later test."""

from __future__ import annotations

import os
import subprocess
import sys
from threading import get_native_id

import orjson
import pytest

from p2prec.io.priority import background_executor, sched_idle_available

CHILD = """
import os, threading, orjson
from p2prec.io.priority import lower_other_threads, thread_nice

kept = threading.Event(); done = threading.Event(); ids = {}
def serve():
    ids["kept"] = threading.get_native_id(); kept.set(); done.wait(10)
worker = threading.Thread(target=serve); worker.start(); kept.wait(10)
changed = lower_other_threads(7, keep={ids["kept"]})
later = {}
def spawned():
    later["nice"] = thread_nice(threading.get_native_id())
t = threading.Thread(target=spawned); t.start(); t.join()
print(orjson.dumps({
    "changed": changed,
    "main": thread_nice(threading.get_native_id()),
    "kept": thread_nice(ids["kept"]),
    "spawned_by_main": later["nice"],
    "again": lower_other_threads(0, keep=set()),
}).decode())
done.set(); worker.join()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_every_thread_but_the_kept_one_is_lowered_and_new_threads_inherit_it() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, check=True, timeout=60
    ).stdout
    seen = orjson.loads(out.splitlines()[-1])
    base = seen["kept"]
    assert seen["changed"] >= 1
    assert seen["main"] == min(19, base + 7)
    assert seen["spawned_by_main"] == seen["main"]  # threads started later inherit it
    assert seen["again"] == 0  # an increment of 0 changes nothing


@pytest.mark.skipif(not sched_idle_available(), reason="SCHED_IDLE is Linux's")
@pytest.mark.parametrize("idle", [True, False])
def test_a_background_executor_runs_its_tasks_under_sched_idle(idle: bool) -> None:
    """Only the executor's own thread changes policy (a thread of its own, not the caller)."""
    before = os.sched_getscheduler(0)
    executor = background_executor("test-background", idle=idle)
    try:
        policy, tid = executor.submit(lambda: (os.sched_getscheduler(0), get_native_id())).result()
    finally:
        executor.shutdown()
    assert policy == (os.SCHED_IDLE if idle else before)
    assert tid != get_native_id() and os.sched_getscheduler(0) == before
