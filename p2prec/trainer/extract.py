"""Delta extraction: the rows a publication touched (and the dense tensors, when due) become
``ParamDelta`` messages that continue the head's lineage.

Every touched shard steps once: its base is the head's version and its new version is the next
``seq`` in ``epoch``; every row carries its shard's new version. Trees are per shard group, so
one delta is built per group touched (``group_of_shard``); the dense tensors belong to the dense
shard. Nothing is diffed: the caller names the touched ids (sorted, unique).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2prec.core.versions import EPOCH_MAX, SEQ_BITS, SEQ_MAX
from p2prec.model.keyhash import shard_of, table_salt
from p2prec.model.layout import StoreLayout
from p2prec.wire.messages import ParamDelta, TableRows

I64 = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.floating]


@dataclass(frozen=True, eq=False)
class TouchedRows:
    """New values of the rows one table's publication touched."""

    keys: I64  # unique ids
    rows: FloatArray  # (len(keys), dim)


def next_versions(vector: I64, touched: npt.NDArray[np.bool_], epoch: int) -> I64:
    """The head vector after one step of the ``touched`` shards into ``epoch``."""
    if not 1 <= epoch <= EPOCH_MAX:
        raise ValueError(f"epoch {epoch} outside 1..{EPOCH_MAX}")
    if (vector >> SEQ_BITS).max(initial=0) > epoch:
        raise ValueError(f"epoch {epoch} is older than the head's")
    seq = (vector & SEQ_MAX) + 1
    if (seq[touched] > SEQ_MAX).any():
        raise ValueError("a shard ran out of sequence numbers")
    stepped = (np.int64(epoch) << np.int64(SEQ_BITS)) | seq
    return np.where(touched, stepped, vector).astype(np.int64)


def build_deltas(
    layout: StoreLayout,
    shard_groups: int,
    vector: I64,
    epoch: int,
    tables: Mapping[str, TouchedRows],
    dense: Mapping[str, FloatArray],
    created_ms: int = 0,
) -> list[ParamDelta]:
    """One delta per shard group touched, in group order (see module docstring)."""
    row_shards = {
        name: shard_of(table_salt(name), t.keys, layout.row_shards) for name, t in tables.items()
    }
    touched = np.zeros(layout.n_shards, dtype=bool)
    for shards in row_shards.values():
        touched[shards] = True
    touched[layout.dense_shard] = bool(dense)
    after = next_versions(vector, touched, epoch)
    group_of = np.arange(layout.n_shards) % shard_groups
    deltas = []
    for group in np.unique(group_of[touched]):
        shards = np.flatnonzero(touched & (group_of == group))
        rows = {
            name: _rows_in_group(t, row_shards[name], group_of, int(group), after, layout)
            for name, t in tables.items()
        }
        with_dense = dense and group_of[layout.dense_shard] == group
        deltas.append(
            ParamDelta(
                shards=tuple(int(s) for s in shards),
                bases=tuple(int(v) for v in vector[shards]),
                versions=tuple(int(v) for v in after[shards]),
                tables={name: r for name, r in rows.items() if len(r)},
                dense=dict(dense) if with_dense else {},
                created_ms=created_ms,
            )
        )
    return deltas


def _rows_in_group(
    touched: TouchedRows,
    shards: I64,
    group_of: I64,
    group: int,
    after: I64,
    layout: StoreLayout,
) -> TableRows:
    mine = group_of[shards] == group
    keys = touched.keys[mine]
    values = np.ascontiguousarray(touched.rows[mine], dtype=layout.np_dtype)
    return TableRows(keys.astype(np.int64), after[shards[mine]], values)
