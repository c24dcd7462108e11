"""Thread priorities of a node process (``p2prec.io.priority``), checked in a child process:
lowering threads of the test process itself would slow every later test."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

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
