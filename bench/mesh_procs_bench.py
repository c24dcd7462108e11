"""Publish -> applied-on-every-node latency with one OS process per mesh member.

    python bench/mesh_procs_bench.py [--dcs 3] [--per-dc 4] [--rate 50] [--rows 1000] [--steps 500]
                                     [--window-s 6] [--set KEY=VALUE ...]

Starts ``p2prec node`` processes on 127.0.0.1 (CURVE on, local preset, one shard group so a
step is one delta, one table of dim 64): the nodes first, then the trainer with a synthetic
stream, which it starts once every node is alive in its view (``--synthetic-wait-members``:
a delta published before a node is known reaches it only by catch-up). Each node records, for
every delta it applies, the wall-clock time since the trainer created it, and writes them to
``applied.json`` when stopped. A delta's latency is the largest over all nodes (applied
everywhere). The stream's first ``--warmup-s`` seconds (nodes still completing their own views
of each other) are left out. Every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from p2prec.io.localmesh import free_ports, key_settings, node_command, read_status
from p2prec.io.synthetic import SyntheticStream
from p2prec.model.spare import PREPARE_AT


def node_cmd(
    tmp: Path,
    node_id: str,
    dc: str,
    port: int,
    seed: str,
    initial_rows: int,
    role: str = "node",
    dim: int = 64,
    row_shards: int = 64,
    dtype: str = "float32",
    extra: Sequence[str] = (),
) -> list[str]:
    tuning = [
        "--set",
        f"store.dtype={dtype}",
        "--set",
        f"store.row_shards={row_shards}",
        "--set",
        f"store.initial_rows={initial_rows}",
        "--set",
        "mesh.shard_groups=1",
        "--set",
        'store.tables=["item"]',
        "--set",
        f"store.dim={dim}",
        "--set",
        "log.level=warning",
        *(arg for setting in extra for arg in ("--set", setting)),
    ]
    return node_command(tmp, node_id, dc, port=port, seeds=[seed], role=role, settings=tuning)


def status(tmp: Path, node_id: str) -> dict[str, object] | None:
    return read_status(tmp, node_id)


def wait_for(what: str, condition: object, timeout_s: float) -> None:
    assert callable(condition)
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dcs", type=int, default=3)
    parser.add_argument("--per-dc", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0, help="deltas per second")
    parser.add_argument("--rows", type=int, default=1000, help="rows per delta")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument(
        "--dtype", default="float32", help="store.dtype of every member (float16: half the bytes)"
    )
    parser.add_argument(
        "--row-shards", type=int, default=64, help="store.row_shards (shards a delta can step)"
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=2.0,
        help="leave out deltas created in the stream's first seconds (every node is known "
        "to the trainer, but nodes may still be completing their views of each other: such "
        "deltas reach a node by catch-up)",
    )
    parser.add_argument(
        "--window-s",
        type=float,
        default=0.0,
        help="also print p50/p99 per window of this many seconds of the stream (0: not): "
        "whether the tail comes from the stream's start or keeps growing with the stores",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config setting for every member, after the benchmark's own (repeatable)",
    )
    parser.add_argument(
        "--validate-every",
        type=int,
        default=100,
        help="trainer validates every N steps (0: never; 100 as trainer.validate_every_steps)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        run(Path(name), args)


def run(tmp: Path, args: argparse.Namespace) -> None:
    subprocess.run(
        [sys.executable, "-m", "p2prec.cli", "keygen", *key_settings(tmp)],
        check=True,
        capture_output=True,
    )
    nodes = [(f"dc{d}-n{i}", f"dc{d}") for d in range(args.dcs) for i in range(args.per_dc)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "p2prec.cli",
            "keygen",
            *key_settings(tmp),
            "--curve",
            "trainer",
            *[n for n, _ in nodes],
        ],
        check=True,
        capture_output=True,
    )
    trainer_port, *node_ports = free_ports(1 + len(nodes))  # distinct: see free_ports
    seed = f"trainer@127.0.0.1:{trainer_port}"
    procs: list[subprocess.Popen[bytes]] = []
    rows = initial_rows(args)
    try:
        for (node_id, dc), port in zip(nodes, node_ports, strict=True):
            procs.append(
                subprocess.Popen(
                    node_cmd(
                        tmp,
                        node_id,
                        dc,
                        port,
                        seed,
                        rows,
                        row_shards=args.row_shards,
                        dtype=args.dtype,
                        extra=args.set,
                    ),
                    stderr=subprocess.DEVNULL,
                )
            )
        wait_for("nodes up", lambda: all(status(tmp, n) for n, _ in nodes), 60)
        cpu_at_start = {n: cpu_seconds(proc.pid) for (n, _), proc in zip(nodes, procs, strict=True)}
        trainer = node_cmd(
            tmp,
            "trainer",
            "dct",
            trainer_port,
            seed,
            rows,
            role="trainer",
            row_shards=args.row_shards,
            dtype=args.dtype,
            extra=args.set,
        )
        trainer += [
            "--synthetic-rate",
            str(args.rate),
            "--synthetic-rows",
            str(args.rows),
            "--synthetic-steps",
            str(args.steps),
            "--synthetic-validate-every",
            str(args.validate_every),
            "--synthetic-wait-members",  # the stream starts once the mesh has formed
            str(len(nodes)),
        ]
        procs.append(subprocess.Popen(trainer, stderr=subprocess.DEVNULL))
        names = [n for n, _ in nodes] + ["trainer"]
        wait_for("stream end", lambda: _stream_done(tmp, args.steps), args.steps / args.rate + 60)
        wait_for("convergence", lambda: _converged(tmp, [n for n, _ in nodes]), 60)
        cpu_s = {
            name: cpu_seconds(proc.pid) - cpu_at_start.get(name, 0.0)
            for name, proc in zip(names, procs, strict=True)
        }
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    report(tmp, [n for n, _ in nodes], args)
    report_cpu(cpu_s, args)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / float(os.sysconf("SC_CLK_TCK"))


def report_cpu(cpu_s: dict[str, float], args: argparse.Namespace) -> None:
    """CPU per delta: whether the members, together, fit the cores of this machine."""
    nodes = [v for k, v in cpu_s.items() if k != "trainer"]
    per_delta_ms = 1000 * np.array(nodes) / args.steps
    print(
        f"CPU per delta: node mean {per_delta_ms.mean():.2f} ms (max {per_delta_ms.max():.2f}), "
        f"trainer {1000 * cpu_s['trainer'] / args.steps:.2f} ms; all members "
        f"{sum(cpu_s.values()):.1f} s of CPU for {args.steps / args.rate:.0f} s of stream "
        f"on {os.cpu_count()} cores (nodes: from the stream's start; trainer: incl. start-up)"
    )


def initial_rows(args: argparse.Namespace) -> int:
    """Pre-size the tables (``store.initial_rows``) for the rows the stream will create, plus
    the unvalidated tail, so that no table doubles (a copy of every row) mid-measurement."""
    key_space: int = SyntheticStream().key_space
    steps: int = args.steps
    rows: int = args.rows
    tail: int = rows * max(int(args.validate_every), 1) * 2
    expected = key_space * (1 - math.exp(-steps * rows / key_space))
    # Above the share at which a table prepares its next, doubled array (model/spare.py):
    # preparing one is part of a growth, which this benchmark leaves out.
    return int((int(expected * 1.1) + tail) / PREPARE_AT) + 1


def _stream_done(tmp: Path, steps: int) -> bool:
    head = status(tmp, "trainer")
    if head is None:
        return False
    vector = head["vector"]
    assert isinstance(vector, list)
    return max(int(v) & ((1 << 40) - 1) for v in vector) >= steps


def _converged(tmp: Path, nodes: list[str]) -> bool:
    head = status(tmp, "trainer")
    states = [status(tmp, n) for n in nodes]
    return head is not None and all(
        s is not None and s["merkle_root"] == head["merkle_root"] for s in states
    )


def report(tmp: Path, nodes: list[str], args: argparse.Namespace) -> None:
    applied = {n: orjson.loads((tmp / "state" / n / "applied.json").read_bytes()) for n in nodes}
    first_ms = min((c for records in applied.values() for c, _ in records), default=0)
    after_ms = first_ms + 1000 * args.warmup_s
    per_delta: dict[int, list[float]] = {}
    for records in applied.values():
        for created_ms, latency_ms in records:
            if created_ms >= after_ms:
                per_delta.setdefault(int(created_ms), []).append(float(latency_ms))
    everywhere = np.array([max(v) for v in per_delta.values() if len(v) == len(nodes)])
    one_node = np.array([x for v in per_delta.values() for x in v])
    print(
        f"mesh: {args.dcs} dcs x {args.per_dc} nodes + trainer, one process each, CURVE, "
        f"127.0.0.1; {args.steps} deltas of {args.rows} rows x dim 64 {args.dtype} at {args.rate}/s"
    )
    print(f"deltas measured (applied on all {len(nodes)} nodes): {everywhere.size}")
    if everywhere.size == 0:
        raise SystemExit(
            "no delta was applied on every node after the warm-up: run longer (--steps)"
        )
    for label, values in (("applied on every node", everywhere), ("applied on one node", one_node)):
        p50, p99 = np.percentile(values, [50, 99])
        print(f"{label:24} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   max {values.max():7.1f} ms")
    print("goal: p99 applied on every node < 100 ms")
    if args.window_s > 0:
        report_windows(per_delta, len(nodes), first_ms, args.window_s)


def report_windows(
    per_delta: dict[int, list[float]], n_nodes: int, first_ms: int, window_s: float
) -> None:
    """p50/p99 (applied on every node) of the deltas created in each window of the stream."""
    windows: dict[int, list[float]] = {}
    for created_ms, latencies in sorted(per_delta.items()):
        if len(latencies) == n_nodes:
            index = int((created_ms - first_ms) / (1000 * window_s))
            windows.setdefault(index, []).append(max(latencies))
    for index, values in sorted(windows.items()):
        p50, p99 = np.percentile(values, [50, 99])
        start, end = index * window_s, (index + 1) * window_s
        span = f"{start:.0f}-{end:.0f} s"
        print(f"  stream {span:>10}: {len(values):4} deltas  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")


if __name__ == "__main__":
    main()
