"""The next, doubled rows array of a table, prepared by a worker thread before it is needed.

A table grows by doubling: a fresh array, the old rows copied into it. The copy is cheap; the
first touch of the fresh pages is not: 309 ms for 256 MiB (1M slots of dim 64) on the loop of
a node that had been running a while (its memory too fragmented for transparent huge pages),
a stall of every query and delta. So once a table is ``PREPARE_AT`` full, a worker thread
allocates the next array (asking the kernel for huge pages) and touches one item per page
(numpy releases the GIL for it); the growth then only copies the old rows, ~7 ms at that size.
A growth that comes before the spare is ready allocates as before.
"""

from __future__ import annotations

import mmap
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

PREPARE_AT = 0.75  # share of a table's slots in use at which the next array is prepared
PAGE_BYTES = 4096
SPARE_MIN_BYTES = 1 << 20  # smaller arrays are allocated when needed (their faults are cheap)


class SpareRows:
    """A rows array of ``capacity`` slots being prepared in a worker thread."""

    def __init__(self, capacity: int, dim: int, dtype: np.dtype[Any]) -> None:
        self.capacity = capacity
        self._ready = threading.Event()
        self._rows: npt.NDArray[Any] | None = None
        self._thread = threading.Thread(
            target=self._prepare, args=(dim, dtype), name="p2prec-spare-rows", daemon=True
        )
        self._thread.start()

    def take(self) -> npt.NDArray[Any] | None:
        """The prepared array, once (None while it is still being prepared)."""
        if not self._ready.is_set():
            return None
        rows, self._rows = self._rows, None
        return rows

    def wait(self, timeout_s: float) -> bool:
        """Wait until the array is ready (tests)."""
        return self._ready.wait(timeout_s)

    def _prepare(self, dim: int, dtype: np.dtype[Any]) -> None:
        try:
            rows = huge_page_array((self.capacity, dim), dtype)
            step = max(1, PAGE_BYTES // dtype.itemsize)
            rows.reshape(-1)[::step] = 0  # touch every page now, off the loop
            self._rows = rows
        finally:
            self._ready.set()  # a failure leaves no array: the growth allocates as before


def huge_page_array(shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """An uninitialised array in anonymous memory advised for transparent huge pages (a 2 MiB
    page is one fault where 4 KiB pages are 512; the kernel's default here is ``madvise``)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < SPARE_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    memory = mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(memory, dtype=dtype).reshape(shape)
