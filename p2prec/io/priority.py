"""CPU priority of a node's threads: queries before replication, replication before checkpoints.

A node serves queries on one thread (``p2prec.serve.server.start_server_thread``) and
replicates on the others: the event loop that receives, verifies and applies deltas, ZeroMQ's
I/O thread (CURVE, TCP), the disk writers. On a busy CPU the scheduler then runs whichever is
due; raising the nice value of the replication threads lets a query preempt them. Linux keeps a
nice value per thread (``setpriority(PRIO_PROCESS, tid, ...)``) and a new thread inherits its
creator's, so the executor threads the replication loop starts later are lowered too.

Checkpoints are background work below replication (as RocksDB lowers its compaction threads:
``Env::LowerThreadPoolCPUPriority``): ``background_executor`` runs them on a thread of their
own under ``SCHED_IDLE``, which the scheduler runs only in what the other threads leave, at a
weight of 3 against nice 19's 15, so a delta's path preempts them on a busy host. On a host
kept busy that share is small: the node then goes on with a checkpoint that falls behind its
log on a thread at the replication threads' priority (``NodeDriver._in_background``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor

from p2prec.log import get_logger

log = get_logger("p2prec.priority")
NICE_MAX = 19
TASKS_DIR = "/proc/self/task"


def thread_ids() -> list[int]:
    """Native ids of this process's threads (Linux); [] where /proc is not available."""
    try:
        return sorted(int(name) for name in os.listdir(TASKS_DIR))
    except OSError:
        return []


def thread_nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def lower_other_threads(increment: int, keep: Collection[int]) -> int:
    """Raise the nice value of every thread of this process but ``keep`` (native ids) by
    ``increment`` (capped at 19); returns how many threads changed. A thread that ended
    meanwhile is skipped; a refusal (a platform without per-thread priorities) is logged and
    changes nothing more: the node runs on at equal priority."""
    if increment <= 0:
        return 0
    changed = 0
    for tid in thread_ids():
        if tid in keep:
            continue
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(NICE_MAX, thread_nice(tid) + increment))
        except ProcessLookupError:
            continue  # the thread ended
        except OSError as exc:
            log.warning("thread_priority_refused", tid=tid, error=str(exc))
            return changed
        changed += 1
    log.info("replication_threads_lowered", threads=changed, increment=increment)
    return changed


def sched_idle_available() -> bool:
    return hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_setscheduler")


def run_this_thread_idle() -> bool:
    """Put the calling thread under ``SCHED_IDLE`` (Linux); False, logged, where the platform
    has no such policy or refuses it: the thread runs on at its inherited priority."""
    if not sched_idle_available():
        log.warning("thread_priority_refused", policy="SCHED_IDLE", error="not on this platform")
        return False
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:
        log.warning("thread_priority_refused", policy="SCHED_IDLE", error=str(exc))
        return False
    return True


def background_executor(name: str, idle: bool) -> ThreadPoolExecutor:
    """One worker thread named ``name`` for background work, under ``SCHED_IDLE`` when
    ``idle`` (see the module docstring); started at its first task."""
    initializer = run_this_thread_idle if idle else None
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=initializer)
