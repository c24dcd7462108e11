"""Store benchmark: apply, digest and root costs, as ratios to numpy baselines of the same run.

    python bench/store_bench.py [--rows-held 1000000] [--delta-rows 100000] [--dim 64]

Apply includes everything the store does for a delta: shard placement, id lookup (and insert
of new ids), version checks, the write, undo record, change history and digest update.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from p2prec.core.merkle import MerkleTree
from p2prec.core.versions import Version
from p2prec.model.keyhash import table_salt
from p2prec.model.layout import StoreLayout
from p2prec.model.rowhash import row_hashes
from p2prec.model.store import ParamStore
from p2prec.wire.messages import ParamDelta, TableRows


def best_of(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def delta_for(
    layout: StoreLayout, table: str, keys: np.ndarray, seq: int, rng: np.random.Generator
) -> ParamDelta:
    shards = tuple(range(layout.row_shards))
    base = Version(1, seq - 1).packed if seq > 1 else 0
    version = Version(1, seq).packed
    rows = rng.standard_normal((keys.size, layout.dim), dtype=np.float32)
    versions = np.full(keys.size, version, dtype=np.int64)
    return ParamDelta(
        shards,
        (base,) * len(shards),
        (version,) * len(shards),
        {table: TableRows(keys, versions, rows)},
    )


class Timeline:
    """Deltas that every shard steps once, so consecutive applies are never duplicates."""

    def __init__(self, layout: StoreLayout, rng: np.random.Generator) -> None:
        self.layout, self.rng, self.seq = layout, rng, 0

    def next(self, table: str, keys: np.ndarray) -> ParamDelta:
        self.seq += 1
        return delta_for(self.layout, table, keys, self.seq, self.rng)


def fill(store: ParamStore, timeline: Timeline, ids: np.ndarray, batch: int) -> None:
    for table in store.layout.tables:
        for start in range(0, ids.size, batch):
            assert store.apply(timeline.next(table, ids[start : start + batch])).applied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows-held", type=int, default=1_000_000)
    parser.add_argument("--delta-rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    layout = StoreLayout(row_shards=64, dim=args.dim)
    held, n = args.rows_held, args.delta_rows
    ids = rng.choice(np.iinfo(np.int64).max, size=held + args.runs * n, replace=False)
    store = ParamStore(
        layout,
        undo_rows_max=held * 4,
        history_rows_max=held * 4,
        capacity_rows=held + (args.runs + 2) * n,
    )
    timeline = Timeline(layout, rng)
    fill(store, timeline, ids[:held], n)

    # Baseline: a bare numpy scatter of the same rows into a table of the same size.
    bare = np.zeros((held, args.dim), dtype=np.float32)
    idx = rng.choice(held, size=n, replace=False)
    values = rng.standard_normal((n, args.dim), dtype=np.float32)
    t_bare = best_of(args.runs, lambda: bare.__setitem__(idx, values))

    def some_ids() -> npt.NDArray[np.int64]:
        return np.asarray(ids[:held][rng.choice(held, n, replace=False)], dtype=np.int64)

    # Steady state: the validator keeps up, so the slots freed by validation are reused (a
    # cold store would also pay the first touch of fresh memory, which is not the store's cost).
    for _ in range(args.runs):
        store.apply(timeline.next("item", some_ids()))
        store.validate(store.vector)
    t_update, t_validate = best_of_each(
        store, [timeline.next("item", some_ids()) for _ in range(args.runs)]
    )
    fresh = [
        timeline.next("user", ids[held + i * n : held + (i + 1) * n]) for i in range(args.runs)
    ]
    t_insert, _ = best_of_each(store, fresh)
    store.validate_state()

    keys = ids[:n]
    versions = np.full(n, 1, dtype=np.int64)
    shards = rng.integers(0, layout.row_shards, n)

    def digest_update() -> object:
        """What the store does per changed row for the digests: hash the new row, then sum
        the change per shard (sorted by shard, cumulative sum, segment differences)."""
        hashes = row_hashes(table_salt("item"), keys, versions, values)
        order = np.argsort(shards.astype(np.int16), kind="stable")
        bounds = np.searchsorted(shards[order], np.arange(layout.n_shards + 1))
        running = np.concatenate([np.zeros(1, np.uint64), np.cumsum(hashes[order])])
        return running[bounds[1:]] - running[bounds[:-1]]

    t_hash = best_of(args.runs, digest_update)
    digests = store.digests
    t_root = best_of(20, lambda: MerkleTree.build(digests))

    print(f"store: {held:,} rows held per table, delta of {n:,} rows, dim {args.dim}, float32")
    print(f"{'measure':44} {'value':>14} {'ratio':>8}")
    line("bare numpy table[idx] = rows", n / t_bare, "rows/s", 1.0)
    line("apply: update existing ids", n / t_update, "rows/s", t_bare / t_update)
    line("apply: insert new ids", n / t_insert, "rows/s", t_bare / t_insert)
    line(
        "validate (release undo of the applied rows)", n / t_validate, "rows/s", t_bare / t_validate
    )
    line("digest update per changed row", t_hash / n * 1e9, "ns/row", None)
    line(f"Merkle root over {layout.n_shards} shard digests", t_root * 1e6, "us", None)
    print("ratio = bare scatter time / store apply time (goal >= 0.25)")


def best_of_each(store: ParamStore, deltas: list[ParamDelta]) -> tuple[float, float]:
    """Best apply time, and best time of the validation that follows each apply."""
    best_apply = best_validate = float("inf")
    for delta in deltas:
        start = time.perf_counter()
        result = store.apply(delta)
        applied = time.perf_counter()
        store.validate(store.vector)
        best_apply = min(best_apply, applied - start)
        best_validate = min(best_validate, time.perf_counter() - applied)
        assert result.rows_written == delta.row_count, result
    return best_apply, best_validate


def line(name: str, value: float, unit: str, ratio: float | None) -> None:
    ratio_text = f"{ratio:8.2f}" if ratio is not None else " " * 8
    print(f"{name:44} {value:>10,.0f} {unit:>3} {ratio_text}")


if __name__ == "__main__":
    main()
