"""/v1/recommend throughput and latency on one node, idle vs. applying the update stream.

    python bench/http_bench.py [--seconds 5] [--rounds 2] [--connections 4] [--k 10]

Starts `p2prec trainer` (torch, CPU, the default trainer and store settings: the full update
stream of a default mesh) and one `p2prec node` (local preset), both on 127.0.0.1, and waits for
the node to be ready. Then alternates phases in the same run: *idle* (trainer paused through
/admin/pause, node root equal to the trainer's: nothing to apply) and *load* (trainer resumed:
the node applies the stream while it answers) and *busy* (trainer running, the node's mesh
links cut by /admin/link-fault: the CPU contention of the trainer without any applying; the
node catches up during the next quiet wait). Each phase runs closed-loop clients on
``--connections`` connections for ``--seconds``, asking for random users (63-bit ids, so nearly
all cold-start answers: the same one matmul over every item as a known user's). Prints a table
and the ratio p99(load) / p99(idle); the goal is <= 1.5. Every process started is stopped by
its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from p2prec.cli import main as cli_main
from p2prec.io.localmesh import data_dir, free_port, key_settings, node_command, read_status

TOKEN = "bench-token"
READY_DEADLINE_S = 180.0
CUT_OFF = {"target": "127.0.0.1:", "drop": True}  # every mesh link of the node


@dataclass
class Phase:
    name: str
    latencies_s: list[float]
    seconds: float
    errors: int
    applied: int  # deltas the node applied during the phase

    @property
    def rate(self) -> float:
        return len(self.latencies_s) / self.seconds

    def pct_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else 0.0


def sets(pairs: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in pairs.items():
        out += ["--set", f"{key}={value}"]
    return out


def start(
    root: Path, name: str, cmd: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with (root / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, **(env or {})}
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_url(root: Path, name: str, proc: subprocess.Popen[bytes]) -> str:
    end = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited: {(root / f'{name}.log').read_text()[-2000:]}")
        status = read_status(root, name)
        if status and status.get("url"):
            return str(status["url"])
        time.sleep(0.1)
    raise SystemExit(f"{name}: no URL within {READY_DEADLINE_S} s")


def start_mesh(
    root: Path, args: argparse.Namespace
) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    options = key_settings(root)
    assert cli_main(["keygen", *options]) == 0
    assert cli_main(["keygen", *options, "--curve", "trainer", "n1"]) == 0
    port = free_port()
    common = {"http.admin_token": TOKEN, "log.level": "warning"}
    trainer_cmd = [sys.executable, "-m", "p2prec.cli", "trainer", "--config", "local", *options]
    trainer_cmd += sets({**common, "node.id": "trainer", "node.dc": "dc-t", "mesh.port": port})
    trainer_cmd += sets({"node.data_dir": data_dir(root, "trainer"), "trainer.device": "cpu"})
    threads = {"OMP_NUM_THREADS": str(args.trainer_threads)} if args.trainer_threads else {}
    trainer = start(root, "trainer", trainer_cmd, threads)
    node_cmd = node_command(root, "n1", "dc1", seeds=[f"trainer@127.0.0.1:{port}"])
    node = start(root, "n1", node_cmd + sets(common))
    procs = [trainer, node]
    return procs, wait_url(root, "trainer", trainer), wait_url(root, "n1", node)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def admin(
    session: aiohttp.ClientSession, url: str, method: str = "POST", body: Any = None
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with session.request(method, url, headers=headers, json=body) as response:
        assert response.status == 200, await response.text()


async def until(session: aiohttp.ClientSession, url: str, check: Any, what: str) -> None:
    end = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < end:
        try:
            status, body = await get_json(session, url)
            if check(status, body):
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)  # polling with a deadline
    raise SystemExit(f"timed out waiting for {what}")


async def client_loop(
    session: aiohttp.ClientSession, url: str, k: int, end_s: float, seed: int, out: Phase
) -> None:
    rng = np.random.default_rng(seed)
    while time.perf_counter() < end_s:
        user = int(rng.integers(1, 1 << 62))
        start_s = time.perf_counter()
        async with session.get(f"{url}/v1/recommend?user={user}&k={k}") as response:
            await response.read()
            if response.status != 200:
                out.errors += 1
                continue
        out.latencies_s.append(time.perf_counter() - start_s)


async def measure(
    session: aiohttp.ClientSession, node: str, name: str, args: argparse.Namespace
) -> Phase:
    _, before = await get_json(session, node + "/v1/status")
    phase = Phase(name, [], args.seconds, 0, 0)
    end_s = time.perf_counter() + args.seconds
    loops = [client_loop(session, node, args.k, end_s, i, phase) for i in range(args.connections)]
    await asyncio.gather(*loops)
    _, after = await get_json(session, node + "/v1/status")
    phase.applied = after["counters"]["applied"] - before["counters"]["applied"]
    return phase


async def quiet(session: aiohttp.ClientSession, trainer: str, node: str) -> None:
    await admin(session, trainer + "/admin/pause")
    _, head = await get_json(session, trainer + "/v1/status")
    root = head["merkle_root"]
    await until(session, node + "/v1/status", lambda s, b: b["merkle_root"] == root, "quiet")


async def run_phases(trainer: str, node: str, args: argparse.Namespace) -> list[Phase]:
    connector = aiohttp.TCPConnector(limit=args.connections + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        await until(session, node + "/readyz", lambda s, b: s == 200, "the node ready")
        await measure(session, node, "warm-up", argparse.Namespace(**{**vars(args), "seconds": 1}))
        phases = []
        for _ in range(args.rounds):
            await quiet(session, trainer, node)
            phases.append(await measure(session, node, "idle", args))
            await admin(session, trainer + "/admin/resume")
            phases.append(await measure(session, node, "load", args))
            # The trainer busy as in "load", but the node cut off: CPU contention alone.
            await admin(session, node + "/admin/link-fault", body=CUT_OFF)
            phases.append(await measure(session, node, "busy", args))
            await admin(session, node + "/admin/link-fault", "DELETE")
        return phases


def merged(phases: list[Phase], name: str) -> Phase:
    chosen = [p for p in phases if p.name == name]
    return Phase(
        name,
        [x for p in chosen for x in p.latencies_s],
        sum(p.seconds for p in chosen),
        sum(p.errors for p in chosen),
        sum(p.applied for p in chosen),
    )


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    print(
        f"/v1/recommend k={args.k}, {args.connections} connections, "
        f"{args.rounds} x {args.seconds} s per phase"
    )
    print(
        f"{'phase':<6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}"
        f" {'deltas applied':>15}"
    )
    for phase in (merged(phases, name) for name in ("idle", "load", "busy")):
        print(
            f"{phase.name:<6} {phase.rate:>8.0f} {phase.pct_ms(50):>8.2f} {phase.pct_ms(99):>8.2f}"
            f" {phase.pct_ms(100):>8.2f} {phase.errors:>7} {phase.applied:>15}"
        )
    idle, load, busy = (merged(phases, name) for name in ("idle", "load", "busy"))
    ratio = load.pct_ms(99) / idle.pct_ms(99) if idle.pct_ms(99) else float("nan")
    verdict = "met" if ratio <= 1.5 else "NOT met"
    print(
        f"p99 load / idle = {ratio:.2f} (goal <= 1.5: {verdict}); "
        f"req/s load / idle = {load.rate / idle.rate:.2f}"
    )
    if idle.pct_ms(99):
        print(
            f"p99 busy / idle = {busy.pct_ms(99) / idle.pct_ms(99):.2f} (trainer running, node "
            "cut off: the share of the slowdown that is CPU contention, not applying)"
        )
        print(f"p99 load / busy = {load.pct_ms(99) / busy.pct_ms(99):.2f} (what applying adds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=2, help="idle/load pairs")
    parser.add_argument("--connections", type=int, default=4, help="concurrent clients")
    parser.add_argument("--k", type=int, default=10, help="items per answer")
    parser.add_argument(
        "--trainer-threads",
        type=int,
        default=0,
        help="torch threads of the trainer (OMP_NUM_THREADS; 0: torch's default, every core)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        root = Path(tmp)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs, trainer, node = start_mesh(root, args)
            report(asyncio.run(run_phases(trainer, node, args)), args)
        finally:
            for proc in procs:
                stop(proc)


if __name__ == "__main__":
    main()
