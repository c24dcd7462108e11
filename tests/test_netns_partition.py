"""A real mesh of `p2prec node` processes across Linux network namespaces, one per datacenter
plus one for the trainer, joined by a bridge in a "wan" namespace. One datacenter is cut off
with iptables DROP while the trainer's synthetic stream runs: it falls behind while the others
keep up; after healing and the end of the stream every node holds the trainer's state.

Needs root, iproute2 and iptables; skipped otherwise. Only private addresses on links this test
creates are used, and every process, namespace and link is removed in ``finally``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from p2prec.core.versions import SEQ_MAX

SUBNET = "10.77.0"
STREAM_RATE = 10  # steps per second
STREAM_STEPS = 300  # the stream ends by itself after ~30 s
CONVERGE_S = 60.0  # bound for every node to equal the trainer once the stream has ended

# namespace -> member ids living in it (the trainer's namespace first)
LAYOUT: dict[str, list[str]] = {
    "tr": ["trainer"],
    "dc0": ["a1", "a2"],
    "dc1": ["b1", "b2"],
    "dc2": ["c1"],
}
CUT_DC = "dc0"


def _can_build() -> bool:
    return (
        sys.platform == "linux"
        and os.geteuid() == 0
        and shutil.which("ip") is not None
        and shutil.which("iptables") is not None
    )


pytestmark = pytest.mark.skipif(
    not _can_build(), reason="needs root and iproute2/iptables to build network namespaces"
)


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


class Net:
    """Namespaces ``<prefix>-<name>`` with one veth each onto a bridge in ``<prefix>-wan``."""

    def __init__(self, names: list[str]) -> None:
        self.tag = os.getpid() % 100000
        self.prefix = f"p2pt{self.tag}"
        self.created: list[str] = []
        self.names = names
        self.addr: dict[str, str] = {name: f"{SUBNET}.{10 + i}" for i, name in enumerate(names)}

    def build(self) -> None:
        """Separate from __init__ so that delete() also undoes a half-built network."""
        tag, names = self.tag, self.names
        wan = self._add("wan")
        _sh("ip", "-n", wan, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", wan, "link", "set", "br0", "up")
        _sh("ip", "-n", wan, "link", "set", "lo", "up")
        for i, name in enumerate(names):
            ns = self._add(name)
            peer = f"w{tag}x{i}"  # <= 15 characters
            _sh(
                "ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                "peer", "name", peer, "netns", wan,
            )  # fmt: skip
            _sh("ip", "-n", wan, "link", "set", peer, "master", "br0", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _add(self, name: str) -> str:
        ns = self.ns(name)
        _sh("ip", "netns", "add", ns)
        self.created.append(ns)
        return ns

    def _drop_rules(self, name: str) -> Iterator[list[str]]:
        for other, addr in self.addr.items():
            if other != name:
                yield ["INPUT", "-s", addr, "-j", "DROP"]
                yield ["OUTPUT", "-d", addr, "-j", "DROP"]

    def partition(self, name: str) -> None:
        for rule in self._drop_rules(name):
            _sh("ip", "netns", "exec", self.ns(name), "iptables", "-A", *rule)

    def heal(self, name: str) -> None:
        for rule in self._drop_rules(name):
            _sh("ip", "netns", "exec", self.ns(name), "iptables", "-D", *rule)

    def delete(self) -> None:
        for ns in reversed(self.created):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)


def _status(state: Path, node: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = orjson.loads((state / node / "status.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data


def _progress(state: Path, node: str) -> int:
    """Sequence numbers applied, over all shards (the vector holds packed epoch/seq)."""
    status = _status(state, node)
    return 0 if status is None else sum(v & SEQ_MAX for v in status["vector"])


def _wait(what: str, timeout_s: float, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def test_partitioned_datacenter_falls_behind_then_converges(tmp_path: Path) -> None:
    keys = [
        "--set", f"keys.curve_dir={tmp_path / 'curve'}",
        "--set", f"keys.trainer_public_key={tmp_path / 'trainer.pub'}",
        "--set", f"keys.trainer_signing_key={tmp_path / 'trainer.key'}",
    ]  # fmt: skip
    cli = [sys.executable, "-m", "p2prec.cli"]
    members = [node for nodes in LAYOUT.values() for node in nodes]
    _sh(*cli, "keygen", *keys)
    _sh(*cli, "keygen", *keys, "--curve", *members)
    state = tmp_path / "state"
    procs: list[subprocess.Popen[bytes]] = []
    net = Net(list(LAYOUT))
    try:
        net.build()
        trainer_seed = f"trainer@{net.addr['tr']}:7000"
        for ns_name, nodes in LAYOUT.items():
            for j, node in enumerate(nodes):
                cmd = [
                    "ip", "netns", "exec", net.ns(ns_name), *cli, "node",
                    "--config", "local", *keys,
                    "--set", "store.row_shards=16", "--set", "store.dim=16",
                    "--set", f"node.id={node}", "--set", f"node.dc={ns_name}",
                    "--set", f"node.data_dir={state / node}",
                    "--set", f"mesh.bind_host={net.addr[ns_name]}",
                    "--set", f"mesh.port={7000 + j}",
                ]  # fmt: skip
                if node == "trainer":
                    cmd += ["--set", "node.role=trainer", "--synthetic-rate", str(STREAM_RATE)]
                    cmd += ["--synthetic-rows", "50", "--synthetic-steps", str(STREAM_STEPS)]
                else:
                    cmd += ["--set", f'mesh.seeds=["{trainer_seed}"]']
                with open(tmp_path / f"{node}.log", "wb") as log:
                    # `ip netns exec` execs the command: the pid is the node's own
                    procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))

        _wait(
            "every node to receive deltas",
            30,
            lambda: all(_progress(state, n) > 0 for n in members),
        )
        cut = LAYOUT[CUT_DC]
        others = [n for n in members if n not in cut and n != "trainer"]

        net.partition(CUT_DC)
        time.sleep(1.0)  # what was in flight lands
        before = {n: _progress(state, n) for n in members}
        time.sleep(6.0)
        after = {n: _progress(state, n) for n in members}
        trainer_gain = after["trainer"] - before["trainer"]
        assert trainer_gain > 0, "the stream stopped during the partition"
        for n in cut:  # nothing reaches the cut datacenter
            assert after[n] - before[n] <= trainer_gain // 10, (n, before, after)
            assert after["trainer"] - after[n] >= trainer_gain // 2, (n, before, after)
        for n in others:  # the rest of the mesh keeps receiving
            assert after[n] - before[n] >= trainer_gain // 2, (n, before, after)
        net.heal(CUT_DC)

        # the stream ends by itself: wait until the trainer's vector stops moving
        last = [-1, time.monotonic()]

        def trainer_idle() -> bool:
            now, value = time.monotonic(), _progress(state, "trainer")
            if value != last[0]:
                last[:] = [value, now]
            return now - last[1] >= 2.0

        _wait("the end of the stream", STREAM_STEPS / STREAM_RATE + 10, trainer_idle)
        trainer = _status(state, "trainer")
        assert trainer is not None

        def converged() -> bool:
            for n in members:
                status = _status(state, n)
                if status is None or any(
                    status[k] != trainer[k] for k in ("epoch", "merkle_root", "vector")
                ):
                    return False
            return True

        _wait(f"every node to equal the trainer within {CONVERGE_S:.0f} s", CONVERGE_S, converged)
        for proc in procs:
            assert proc.poll() is None, f"a node exited early: {proc.args!r}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        net.delete()
