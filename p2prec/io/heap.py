"""Keep freed heap memory in the process for reuse, instead of handing it back to the kernel.

A member's steady state allocates and frees the same sizes over and over: ZeroMQ's buffer for
every received message (a delta: ~256 KiB), the numpy temporaries of each apply, the 4 MiB
snapshot batches of a checkpoint. glibc's malloc serves blocks above its mmap threshold
(128 KiB at first, raised as it sees such blocks freed) with fresh mappings, and returns the
top of a heap past its trim threshold: either way the next block lands on fresh pages, and a
fresh page costs a fault and its zeroing. In a virtual machine that reports freed memory to
its host (virtio free page reporting; the machines this project is measured on), it also
costs a fault in the host: 2.3 s per GiB here against 0.07 s for memory the process already
had (measured). In a 36 s run of the mesh benchmark the nodes' ZeroMQ threads took ~6,500 such
faults per second each until their thresholds caught up.

``keep_freed_heap`` fixes the mmap threshold at its largest (32 MiB: bigger blocks, rare, are
still mapped apart) and the trim threshold at ``keep_mib``, so a process keeps up to that much
freed memory for its next allocations. A peak (a large catch-up) may thus stay resident up
to ``keep_mib`` after it passed. Only glibc has ``mallopt``; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

from p2prec.log import get_logger

log = get_logger(__name__)

MIB = 1 << 20
MMAP_THRESHOLD_BYTES = 32 * MIB  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_heap(keep_mib: int) -> bool:
    """Keep up to ``keep_mib`` MiB of freed heap memory for reuse (0: the C library's own
    behaviour). Returns whether malloc took the settings (False: not glibc, or 0)."""
    if keep_mib < 0:
        raise ValueError(f"keep_mib must be at least 0, got {keep_mib}")
    mallopt = glibc_mallopt()
    if keep_mib == 0 or mallopt is None:
        log.debug("heap_defaults_kept", keep_mib=keep_mib, glibc=mallopt is not None)
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, min(keep_mib * MIB, 2**31 - 1))
    )
    log.debug("heap_kept", keep_mib=keep_mib, applied=applied)
    return applied


def glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt`` (None: another C library, which may lack it or ignore it)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has mallopt as a no-op stub
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return lambda param, value: int(mallopt(param, value))
