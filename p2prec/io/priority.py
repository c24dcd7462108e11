"""CPU priority of a node's threads: queries before replication.

A node serves queries on one thread (``p2prec.serve.server.start_server_thread``) and
replicates on the others: the event loop that receives, verifies and applies deltas, ZeroMQ's
I/O thread (CURVE, TCP), the disk writers. On a busy CPU the scheduler then runs whichever is
due; raising the nice value of the replication threads lets a query preempt them. Linux keeps a
nice value per thread (``setpriority(PRIO_PROCESS, tid, ...)``) and a new thread inherits its
creator's, so the executor threads the replication loop starts later are lowered too.
"""

from __future__ import annotations

import os
from collections.abc import Collection

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
