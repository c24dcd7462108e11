"""What one node does per received 1,000-row delta, stage by stage, in one process.

    python bench/pipeline_bench.py [--deltas 500] [--rows 1000] [--validate-every 20] [--repeat 1]

Stages: decode (frames -> message, BLAKE3 + Ed25519 verify), apply (store), validate
(amortised: one validation every ``--validate-every`` deltas), log append (the node's disk
log). The baseline, measured in the same run, is the bare numpy scatter of the same rows into a
table of the same size (``table[idx] = rows``): the ratios say how far the node's work is from
the memory traffic it cannot avoid. ``--repeat N`` replays the deltas into N fresh nodes and
keeps each stage's best (on a shared machine one run varies by ~30%).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from p2prec.io.persistence import NodeDisk
from p2prec.model.layout import StoreLayout
from p2prec.model.store import ParamStore
from p2prec.sim.lineage import make_delta
from p2prec.wire.codec import decode as decode_frames
from p2prec.wire.codec import encode
from p2prec.wire.messages import ParamDelta
from p2prec.wire.signing import Signer

KEY_SPACE = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deltas", type=int, default=500)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--validate-every", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    layout = StoreLayout(row_shards=64, dim=64, tables=("item",))
    capacity = min(KEY_SPACE, args.deltas * args.rows) + args.rows * args.validate_every * 2
    signer = Signer.generate()
    frames = published_frames(layout, capacity, args, signer)
    runs = [
        run_node(layout, capacity, frames, signer, args.validate_every)
        for _ in range(max(1, args.repeat))
    ]
    stages = {name: min(run[name] for run in runs) for name in runs[0]}
    bare = bare_scatter_ms(layout, capacity, args)
    print(
        f"{args.deltas} deltas of {args.rows} rows x dim {layout.dim}, {layout.row_shards} shards"
    )
    print(f"{'stage':24} {'ms/delta':>9} {'x bare scatter':>15}")
    print(f"{'bare numpy scatter':24} {bare:9.3f} {1.0:15.2f}")
    for name, ms in stages.items():
        print(f"{name:24} {ms:9.3f} {ms / bare:15.2f}")
    total = sum(stages.values())
    print(f"{'node total':24} {total:9.3f} {total / bare:15.2f}")


def published_frames(
    layout: StoreLayout, capacity: int, args: argparse.Namespace, signer: Signer
) -> list[list[bytes]]:
    head = ParamStore(layout, capacity_rows=capacity)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(args.deltas):
        keys = {"item": np.unique(rng.integers(0, KEY_SPACE, args.rows))}
        delta = make_delta(layout, head.vector.packed, keys, False, rng, 1)
        head.apply(delta)
        frames.append([bytes(f) for f in encode(delta, signer)])
    return frames


def run_node(
    layout: StoreLayout,
    capacity: int,
    frames: list[list[bytes]],
    signer: Signer,
    validate_every: int,
) -> dict[str, float]:
    node = ParamStore(layout, capacity_rows=capacity)
    verifier = signer.verifier()
    spent = {"decode + verify": 0.0, "apply": 0.0, "validate (amortised)": 0.0, "log append": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        disk = NodeDisk(tmp, fsync=False)
        for i, message in enumerate(frames):
            t0 = time.perf_counter()
            delta = decode_frames(message, verifier)
            t1 = time.perf_counter()
            assert isinstance(delta, ParamDelta)
            node.apply(delta)
            t2 = time.perf_counter()
            disk.append(message)
            t3 = time.perf_counter()
            spent["decode + verify"] += t1 - t0
            spent["apply"] += t2 - t1
            spent["log append"] += t3 - t2
            if validate_every and (i + 1) % validate_every == 0:
                t4 = time.perf_counter()
                node.validate(node.vector)
                spent["validate (amortised)"] += time.perf_counter() - t4
        disk.close()
    return {name: 1000 * s / len(frames) for name, s in spent.items()}


def bare_scatter_ms(layout: StoreLayout, capacity: int, args: argparse.Namespace) -> float:
    table = np.ones((capacity, layout.dim), dtype=np.float32)
    rng = np.random.default_rng(1)
    rows = np.ones((args.rows, layout.dim), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        slots = [rng.integers(0, capacity, args.rows) for _ in range(args.deltas)]
        t0 = time.perf_counter()
        for idx in slots:
            table[idx] = rows
        best = min(best, (time.perf_counter() - t0) / args.deltas)
    return 1000 * best


if __name__ == "__main__":
    main()
