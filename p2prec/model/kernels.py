"""The store's compiled loops (``_kernels.c``), where a C compiler built them at install.

``NATIVE`` is that module, or None: then every caller runs its numpy code, which stays the
reference the tests hold the compiled loops to (``tests/test_kernels.py``). Set
``P2PREC_NATIVE=0`` in a process's environment to run the numpy code with the module built
(to compare the two, or to rule the compiled code out).
"""

from __future__ import annotations

import importlib
import os
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


class Kernels(Protocol):
    """The functions of ``_kernels.c`` (their docstrings there say what each computes)."""

    def shard_of(self, keys: I64, salt: int, row_shards: int, out: I64) -> None: ...

    def probe(self, pairs: I64, keys: I64, found: I64, empty_at: I64) -> None: ...

    def find_or_insert(self, pairs: I64, keys: I64, out: I64) -> tuple[int, bool]: ...

    def row_hashes(
        self,
        salt: int,
        keys: I64,
        versions: I64,
        rows: npt.NDArray[np.generic],
        constants: U64,
        out: U64,
    ) -> None: ...

    def group_by_shard(
        self,
        shards: I64,
        hashes: U64,
        prev: I64,
        slot_hash: U64,
        order: I64,
        bounds: I64,
        change: U64,
    ) -> None: ...

    def rows_plan(
        self,
        keys: I64,
        versions: I64,
        salt: int,
        row_shards: int,
        status: I64,
        bases: I64,
        tops: I64,
        shards: I64,
        keep: I64,
    ) -> tuple[int, int]: ...

    def newer_rows(
        self,
        pairs: I64,
        positions: I64,
        slot_version: I64,
        versions: I64,
        no_version: int,
        current: I64,
        keep: I64,
    ) -> int: ...

    def fill_slots(
        self,
        slots: I64,
        keys: I64,
        versions: I64,
        shards: I64,
        hashes: U64,
        prev: I64,
        positions: I64,
        slot_key: I64,
        slot_version: I64,
        slot_shard: I64,
        slot_hash: U64,
        slot_prev: I64,
        pairs: I64,
    ) -> None: ...


def _load() -> Kernels | None:
    if os.environ.get("P2PREC_NATIVE", "1") == "0":
        return None
    try:
        module = importlib.import_module("p2prec.model._kernels")
    except ImportError:  # installed without a C compiler: the numpy code runs
        return None
    return cast(Kernels, module)


NATIVE = _load()
