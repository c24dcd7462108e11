"""/v1/recommend latency on one node at a fixed request rate, idle vs. applying the update stream.

    flock /tmp/bench.lock python bench/http_bench.py [--rate R] [--seconds 8] [--rounds 3] [--k 10]

Starts `p2prec trainer` (torch, CPU, the default trainer and store settings: the full update
stream of a default mesh) and one `p2prec node` (local preset), both on 127.0.0.1, and waits for
the node to be ready. In production the trainer runs on its own (GPU) host, so the bench pins
processes with CPU affinity to model that: the trainer (and its torch threads) on CPU 0, the node
and this load generator on CPU 1 (with fewer than 2 CPUs it says so and pins nothing). The
pinning is printed, read back from the kernel.

First a capacity probe: a short closed-loop burst (4 connections, 2 s) on the idle node, printed;
the default ``--rate`` is 30% of it. Then, in the same run, ``--rounds`` times the phases *idle*
(trainer paused through /admin/pause, node root equal to the trainer's: nothing to apply),
*load* (trainer resumed: the node applies the stream while it answers) and *busy* (trainer
running, the node's mesh links cut by /admin/link-fault: contention without applying; the node
catches up during the next quiet wait). Each phase is an open-loop, fixed-rate load (as wrk2):
request i is due at t0 + i / rate whatever happened to earlier ones, and its latency counts from
that intended send time, so a stall of the node (or of the generator) is charged to every request
it delayed (no coordinated omission). Users are random 63-bit ids (nearly all cold-start answers:
the same one matmul over every item as a known user's). Prints per phase the achieved rate,
p50/p99/p99.9/max, errors (non-200, client errors, or no answer within 5 s), deltas the node
applied, "late": the generator's worst delay in sending a request after its due time (its own
stalls; its garbage collector is off inside a phase), "others": the share of the node's CPU that
other processes of the host took (/proc; a few % either way is accounting noise, more is other
work on a shared machine, not the node's fault), and p99 by round;
then the headline ratio p99(load) / p99(idle) (goal <= 1.5) and p99(busy) / p99(idle), each p99
the median of the rounds' p99s (one stall in one round does not decide it; the pooled p99s'
ratios are printed too). Bounded
in time (every wait has a deadline); every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from p2prec.cli import main as cli_main
from p2prec.io.localmesh import data_dir, free_port, key_settings, node_command, read_status

TOKEN = "bench-token"
READY_DEADLINE_S = 180.0
REQUEST_TIMEOUT_S = 5.0
CUT_OFF = {"target": "127.0.0.1:", "drop": True}  # every mesh link of the node
PROBE_S = 2.0
PROBE_CONNECTIONS = 4
DEFAULT_RATE_SHARE = 0.30


@dataclass
class Pinning:
    """CPU sets by role; empty sets: no pinning (fewer than 2 CPUs)."""

    trainer: set[int] = field(default_factory=set)
    node: set[int] = field(default_factory=set)  # the node and this load generator

    @classmethod
    def choose(cls, enabled: bool) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2:
            why = "--no-pin" if not enabled else f"only {len(cpus)} CPU(s) available"
            print(f"pinning: none ({why}); the trainer shares the node's CPUs")
            return cls()
        return cls({cpus[0]}, {cpus[1]})


@dataclass
class Phase:
    name: str
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    applied: int = 0  # deltas the node applied during the phase
    others_cpu_s: float = 0.0  # CPU time others (not the node, not us) took on the node's CPU
    late_s: float = 0.0  # the generator's worst delay in sending a request after its due time

    @property
    def rate(self) -> float:
        return len(self.latencies_s) / self.seconds

    def pct_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else 0.0


def cpu_busy_s(cpu: int) -> float:
    """Seconds one CPU ran processes or was stolen by the hypervisor, since boot (/proc/stat:
    user + nice + system + steal; interrupts, the loopback traffic's own, left out)."""
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            ticks = [int(x) for x in fields[1:9]]
            user, nice, system, steal = ticks[0], ticks[1], ticks[2], ticks[7]
            return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")
    return 0.0


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuWatch:
    """What else than the node and this generator ran on the node's CPU (other work on the host:
    it inflates latencies and has nothing to do with the node)."""

    cpu: int | None
    pids: tuple[int, ...]

    def sample(self) -> float:
        if self.cpu is None:
            return 0.0
        return cpu_busy_s(self.cpu) - sum(process_cpu_s(pid) for pid in self.pids)


def sets(pairs: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in pairs.items():
        out += ["--set", f"{key}={value}"]
    return out


def start(
    root: Path,
    name: str,
    cmd: list[str],
    cpus: set[int],
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    # Pinned before exec, so every thread the process ever starts inherits the set.
    pin: Callable[[], None] | None = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with (root / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env={**os.environ, **(env or {})},
            preexec_fn=pin,  # noqa: PLW1509 (no threads yet in this process)
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
    root: Path, args: argparse.Namespace, pinning: Pinning, procs: list[subprocess.Popen[bytes]]
) -> tuple[str, str]:
    """Starts the trainer and the node (appended to ``procs`` at once, so that the caller stops
    them whatever fails later) and returns their URLs."""
    options = key_settings(root)
    assert cli_main(["keygen", *options]) == 0
    assert cli_main(["keygen", *options, "--curve", "trainer", "n1"]) == 0
    port = free_port()
    common = {"http.admin_token": TOKEN, "log.level": "warning"}
    trainer_cmd = [sys.executable, "-m", "p2prec.cli", "trainer", "--config", "local", *options]
    trainer_cmd += sets({**common, "node.id": "trainer", "node.dc": "dc-t", "mesh.port": port})
    trainer_cmd += sets({"node.data_dir": data_dir(root, "trainer"), "trainer.device": "cpu"})
    threads = args.trainer_threads or len(pinning.trainer)
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    procs.append(start(root, "trainer", trainer_cmd, pinning.trainer, env))
    node_cmd = node_command(root, "n1", "dc1", seeds=[f"trainer@127.0.0.1:{port}"])
    node_sets = dict(kv.split("=", 1) for kv in args.node_set)
    procs.append(start(root, "n1", node_cmd + sets({**common, **node_sets}), pinning.node))
    if pinning.node:
        os.sched_setaffinity(0, pinning.node)  # this process: the load generator
    for name, proc in zip(("trainer", "node n1"), procs, strict=True):
        print(f"pinning: {name} pid {proc.pid} on CPUs {sorted(os.sched_getaffinity(proc.pid))}")
    print(f"pinning: load generator pid {os.getpid()} on CPUs {sorted(os.sched_getaffinity(0))}")
    if threads:
        print(f"trainer: OMP_NUM_THREADS={threads}")
    return wait_url(root, "trainer", procs[0]), wait_url(root, "n1", procs[1])


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def admin(
    session: aiohttp.ClientSession, url: str, method: str = "POST", body: Any = None
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with session.request(method, url, headers=headers, json=body) as response:
        assert response.status == 200, await response.text()


async def until(
    session: aiohttp.ClientSession, url: str, check: Callable[[int, Any], bool], what: str
) -> None:
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


def recommend_url(node: str, k: int, rng: np.random.Generator) -> str:
    return f"{node}/v1/recommend?user={int(rng.integers(1, 1 << 62))}&k={k}"


async def one_request(
    session: aiohttp.ClientSession, url: str, intended_s: float, out: Phase
) -> None:
    try:
        async with session.get(url) as response:
            await response.read()
            ok = response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    if ok:
        out.latencies_s.append(time.perf_counter() - intended_s)
    else:
        out.errors += 1


async def probe_capacity(session: aiohttp.ClientSession, node: str, k: int) -> float:
    """Requests/s of a short closed-loop burst on the idle node (the generator on its CPU)."""
    phase = Phase("probe", PROBE_S)
    end_s = time.perf_counter() + PROBE_S

    async def loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.perf_counter() < end_s:
            await one_request(session, recommend_url(node, k, rng), time.perf_counter(), phase)

    await asyncio.gather(*(loop(i) for i in range(PROBE_CONNECTIONS)))
    return phase.rate


async def open_loop(
    session: aiohttp.ClientSession,
    node: str,
    name: str,
    args: argparse.Namespace,
    seed: int,
    watch: CpuWatch,
) -> Phase:
    """``args.rate`` requests/s for ``args.seconds``, each due at its own intended time."""
    _, before = await get_json(session, node + "/v1/status")
    others_before_s = watch.sample()
    phase = Phase(name, args.seconds)
    rng = np.random.default_rng(seed)
    total = round(args.rate * args.seconds)
    tasks: set[asyncio.Task[None]] = set()
    gc.collect()
    gc.disable()  # no collector pause of the generator's own inside a phase
    try:
        start_s = time.perf_counter()
        for i in range(total):
            intended_s = start_s + i / args.rate
            delay_s = intended_s - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            # Late (the generator's loop stalled): sent now, its latency still counts from due.
            phase.late_s = max(phase.late_s, -delay_s)
            task = asyncio.create_task(
                one_request(session, recommend_url(node, args.k, rng), intended_s, phase)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 1)
    finally:
        gc.enable()
    phase.errors += len(tasks)  # unanswered (the client timeout cancels them before this)
    for task in list(tasks):
        task.cancel()
    phase.others_cpu_s = watch.sample() - others_before_s
    _, after = await get_json(session, node + "/v1/status")
    phase.applied = after["counters"]["applied"] - before["counters"]["applied"]
    return phase


async def quiet(session: aiohttp.ClientSession, trainer: str, node: str) -> None:
    await admin(session, trainer + "/admin/pause")
    _, head = await get_json(session, trainer + "/v1/status")
    root = head["merkle_root"]
    await until(session, node + "/v1/status", lambda s, b: b["merkle_root"] == root, "quiet")


async def run_phases(
    trainer: str, node: str, args: argparse.Namespace, watch: CpuWatch
) -> list[Phase]:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=256)  # never the bottleneck of an open loop
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await until(session, node + "/readyz", lambda s, b: s == 200, "the node ready")
        await quiet(session, trainer, node)
        await probe_capacity(session, node, args.k)  # warm-up
        capacity = await probe_capacity(session, node, args.k)
        print(
            f"capacity (idle, closed loop, {PROBE_CONNECTIONS} connections, {PROBE_S:.0f} s): "
            f"{capacity:.0f} req/s"
        )
        if not args.rate:
            args.rate = max(10.0, round(capacity * DEFAULT_RATE_SHARE, -1))
        print(f"offered rate: {args.rate:.0f} req/s ({args.rate / capacity:.0%} of capacity)")
        phases = []
        for round_no in range(args.rounds):
            seed = 1000 * round_no
            await quiet(session, trainer, node)
            phases.append(await open_loop(session, node, "idle", args, seed, watch))
            await admin(session, trainer + "/admin/resume")
            phases.append(await open_loop(session, node, "load", args, seed + 1, watch))
            # The trainer busy as in "load", but the node cut off: contention alone.
            await admin(session, node + "/admin/link-fault", body=CUT_OFF)
            phases.append(await open_loop(session, node, "busy", args, seed + 2, watch))
            await admin(session, node + "/admin/link-fault", "DELETE")
        await admin(session, trainer + "/admin/pause")
        return phases


def merged(phases: list[Phase], name: str) -> Phase:
    chosen = [p for p in phases if p.name == name]
    return Phase(
        name,
        sum(p.seconds for p in chosen),
        [x for p in chosen for x in p.latencies_s],
        sum(p.errors for p in chosen),
        sum(p.applied for p in chosen),
        sum(p.others_cpu_s for p in chosen),
        max((p.late_s for p in chosen), default=0.0),
    )


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    print(
        f"/v1/recommend k={args.k}, open loop at {args.rate:.0f} req/s, "
        f"{args.rounds} x {args.seconds:g} s per phase (latency from the intended send time)"
    )
    print(
        f"{'phase':<6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>9} {'max ms':>8}"
        f" {'errors':>6} {'deltas':>6} {'late ms':>7} {'others':>6}  p99 ms by round"
    )
    idle, load, busy = (merged(phases, name) for name in ("idle", "load", "busy"))
    for phase in (idle, load, busy):
        by_round = " / ".join(f"{p.pct_ms(99):.1f}" for p in phases if p.name == phase.name)
        print(
            f"{phase.name:<6} {phase.rate:>7.0f} {phase.pct_ms(50):>7.2f} {phase.pct_ms(99):>7.2f}"
            f" {phase.pct_ms(99.9):>9.2f} {phase.pct_ms(100):>8.2f} {phase.errors:>6}"
            f" {phase.applied:>6} {phase.late_s * 1000:>7.1f}"
            f" {phase.others_cpu_s / phase.seconds:>6.0%}  {by_round}"
        )
    if not idle.pct_ms(99):
        print("no idle latencies: no ratio")
        return

    def median_p99(name: str) -> float:
        return float(np.median([p.pct_ms(99) for p in phases if p.name == name]))

    # Headline: the median over rounds of each phase's p99, so that one stall in one round
    # (a collector pause, other work on the host) does not decide it; pooled p99s as well.
    ratio = median_p99("load") / median_p99("idle")
    verdict = "met" if ratio <= 1.5 else "NOT met"
    print(
        f"p99 load / idle = {ratio:.2f} (median of round p99s {median_p99('load'):.2f} / "
        f"{median_p99('idle'):.2f} ms; goal <= 1.5: {verdict}); pooled "
        f"{load.pct_ms(99) / idle.pct_ms(99):.2f}"
    )
    print(
        f"p99 busy / idle = {median_p99('busy') / median_p99('idle'):.2f} (trainer running, node "
        f"cut off: contention without applying); pooled {busy.pct_ms(99) / idle.pct_ms(99):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help=f"offered requests/s (0: {DEFAULT_RATE_SHARE * 100:.0f}%% of the idle capacity)",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="idle/load/busy rounds")
    parser.add_argument("--k", type=int, default=10, help="items per answer")
    parser.add_argument(
        "--trainer-threads",
        type=int,
        default=0,
        help="torch threads of the trainer (OMP_NUM_THREADS; 0: its CPUs when pinned, "
        "else torch's default)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="no CPU affinity (every process on every CPU)"
    )
    parser.add_argument(
        "--node-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key of the node (repeatable), e.g. http.serving_thread=false",
    )
    args = parser.parse_args()
    pinning = Pinning.choose(not args.no_pin)
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        root = Path(tmp)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            trainer, node = start_mesh(root, args, pinning, procs)
            cpu = min(pinning.node) if pinning.node else None
            watch = CpuWatch(cpu, (procs[1].pid, os.getpid()))
            report(asyncio.run(run_phases(trainer, node, args, watch)), args)
        finally:
            for proc in procs:
                stop(proc)


if __name__ == "__main__":
    main()
