"""The next, doubled array of a growing structure, prepared by a worker thread ahead of need.

A table's rows and the key index grow by doubling: a fresh array, the old content copied or
re-inserted. The first touch of the fresh pages is the expensive part: 309 ms for 256 MiB of
rows (1M slots of dim 64) on the loop of a node that had run a while (memory too fragmented
for transparent huge pages), 129 ms to fill a 64 MiB index, stalls of every query and delta.
So once a structure is ``PREPARE_AT`` of the way to its growth, a worker thread allocates the
next array (asking the kernel for huge pages) and touches or fills it (numpy releases the GIL
for that); growing then only copies, ~7 ms for those rows. A growth that comes before the
spare is ready allocates as before (huge-page advised, on the loop).
"""

from __future__ import annotations

import mmap
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

PREPARE_AT = 0.9  # share of the way to a growth at which the next array is prepared
PAGE_BYTES = 4096
SPARE_MIN_BYTES = 1 << 20  # smaller arrays are allocated when needed (their faults are cheap)


class SpareArray:
    """An array of ``shape`` being prepared in a worker thread: every page touched, and every
    item set to ``fill`` unless it is None (numpy releases the GIL for both)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any], fill: int | None) -> None:
        self.shape = shape
        self._ready = threading.Event()
        self._array: npt.NDArray[Any] | None = None
        self._thread = threading.Thread(
            target=self._prepare, args=(dtype, fill), name="p2prec-spare-array", daemon=True
        )
        self._thread.start()

    @property
    def capacity(self) -> int:
        return self.shape[0]

    def take(self) -> npt.NDArray[Any] | None:
        """The prepared array, once (None while it is still being prepared)."""
        if not self._ready.is_set():
            return None
        array, self._array = self._array, None
        return array

    def wait(self, timeout_s: float) -> bool:
        """Wait until the array is ready (tests)."""
        return self._ready.wait(timeout_s)

    def _prepare(self, dtype: np.dtype[Any], fill: int | None) -> None:
        try:
            array = huge_page_array(self.shape, dtype)
            if fill is None:
                step = max(1, PAGE_BYTES // dtype.itemsize)
                array.reshape(-1)[::step] = 0  # touch every page now, off the loop
            else:
                array.fill(fill)
            self._array = array
        finally:
            self._ready.set()  # a failure leaves no array: the growth allocates as before


def huge_page_array(shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """An uninitialised array in private anonymous memory advised for transparent huge pages
    (a 2 MiB page is one fault where 4 KiB pages are 512; the kernel's default here is
    ``madvise``). Private: ``mmap.mmap(-1, n)`` maps shared memory (tmpfs), which gets no
    huge pages where ``shmem_enabled`` is ``never`` (the default): filling 256 MiB took 150 ms
    of CPU in 4 KiB faults, 16 ms in huge pages (measured here)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < SPARE_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(memory, dtype=dtype).reshape(shape)


def prepared_or_new(
    spare: SpareArray | None, shape: tuple[int, ...], dtype: np.dtype[Any], fill: int | None
) -> npt.NDArray[Any]:
    """The array ``spare`` prepared when it is ready and of ``shape``, else a new one (filled
    with ``fill`` unless it is None): what a growth uses."""
    array = spare.take() if spare is not None and spare.shape == shape else None
    if array is None:
        array = huge_page_array(shape, dtype)
        if fill is not None:
            array.fill(fill)
    return array
