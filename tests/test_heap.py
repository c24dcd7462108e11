"""``keep_freed_heap``: freed blocks are reused instead of coming back as fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p2prec.io.heap import glibc_mallopt, keep_freed_heap

# Rounds of eight 4 MiB arrays allocated, written and freed, as a checkpoint's snapshot
# batches or a burst of received messages are; prints the minor faults of the later rounds.
CHURN = """
import resource, sys
import numpy as np
from p2prec.io.heap import keep_freed_heap
applied = keep_freed_heap(int(sys.argv[1]))
def churn(rounds):
    for _ in range(rounds):
        arrays = [np.ones(4 << 20, dtype=np.uint8) for _ in range(8)]
        del arrays
churn(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(5)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(glibc_mallopt() is None, reason="mallopt is glibc's")


def churn_faults(keep_mib: int) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, str(keep_mib)], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@glibc_only
def test_freed_blocks_are_reused_without_fresh_pages() -> None:
    applied, faults = churn_faults(256)
    assert applied
    assert faults < 500  # 160 MiB allocated and freed again: its pages stayed in the process


@glibc_only
def test_without_it_the_same_churn_faults_in_fresh_pages() -> None:
    """The control: glibc's defaults trim and unmap the freed blocks (what the setting fixes),
    and a keep smaller than the churn does not hold it either."""
    applied, faults = churn_faults(0)
    assert not applied
    assert faults > 5_000
    applied, faults = churn_faults(16)
    assert applied
    assert faults > 5_000


def test_a_negative_keep_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 0"):
        keep_freed_heap(-1)
