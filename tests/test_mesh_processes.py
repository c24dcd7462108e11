"""A mesh of real `p2prec node` processes on 127.0.0.1 (CURVE), with crashes and intruders.

A trainer publishes a finite synthetic stream to 3 datacenters x 3 nodes. Mid-stream an
interior relay and a leaf are SIGKILLed and restarted from their data directories; a rogue
process with an unknown CURVE key tries to join; an allow-listed process ("mallory") injects
deltas that are signed by the wrong key, unsigned, or signed and then tampered with. At the end
every node holds exactly the trainer's final state. Conditions are polled on each process's
``status.json`` with deadlines, never with settling sleeps.

Run as a script, this file is mallory (see ``_mallory``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from p2prec.cli import main
from p2prec.config import load_config
from p2prec.core.tree import TreeMember, TreeView
from p2prec.core.versions import Version
from p2prec.io.localmesh import data_dir, free_ports, key_settings, node_command

DCS = ("dc0", "dc1", "dc2")
NODES = [f"{dc}-n{i}" for dc in DCS for i in range(3)]
STEPS = 400  # synthetic steps at 20 per second: the stream ends by itself after ~20 s
RATE = 20
ROW_SHARDS = 16
MEMBERS = 1 + len(NODES)  # the trainer and the nodes
JOIN_DEADLINE_S = 45.0
CONVERGE_DEADLINE_S = 60.0  # after the stream's end, every node equals the trainer within this
POLL_S = 0.1


def _seq(packed: int) -> int:
    return Version.unpack(packed).seq


class Mesh:
    """Processes by name, their commands (to restart them) and their status files."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.keys = key_settings(tmp)
        names = ["trainer", *NODES]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.seed = f"trainer@127.0.0.1:{self.ports['trainer']}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[subprocess.Popen[bytes]] = []  # every process, for the cleanup
        self.commands: dict[str, list[str]] = {}
        self.logs: list[IO[bytes]] = []

    def data_dir(self, name: str) -> Path:
        return data_dir(self.tmp, name)

    def node_command(self, name: str, dc: str, *extra: str) -> list[str]:
        seeds = [] if name == "trainer" else [self.seed]
        tuning = [
            "--set",
            f"store.row_shards={ROW_SHARDS}",
            "--set",
            "store.dim=16",
            "--set",
            "mesh.checkpoint_interval_s=1.0",
            "--set",
            "log.format=json",
        ]
        return node_command(
            self.tmp,
            name,
            dc,
            port=self.ports.get(name, 0),
            seeds=seeds,
            settings=[*tuning, *extra],
        )

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        self.commands[name] = command
        log = (self.tmp / f"{name}.log").open("ab")
        self.logs.append(log)
        proc = subprocess.Popen(command, stdout=log, stderr=log, cwd=self.tmp)
        self.procs[name] = proc
        self.started.append(proc)
        return proc

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        return self.spawn(name, self.commands[name])

    def sigkill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def status(self, name: str) -> dict[str, Any] | None:
        """The latest status.json of ``name`` written by its current process, if any."""
        path = self.data_dir(name) / "status.json"
        try:
            status: dict[str, Any] = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        proc = self.procs.get(name)
        if proc is None or status.get("pid") != proc.pid:
            return None  # not running, or left over by a killed process
        return status

    def statuses(self, names: list[str]) -> dict[str, dict[str, Any]] | None:
        out = {}
        for name in names:
            status = self.status(name)
            if status is None:
                return None
            out[name] = status
        return out

    def until(self, condition: Callable[[], bool], what: str, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while not condition():
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited ({proc.returncode}): see {name}.log"
            trainer = self.status("trainer")
            # No intruder ever becomes a member.
            assert trainer is None or trainer["members"] <= MEMBERS, trainer["members"]
            assert time.monotonic() < end, f"timed out after {deadline_s} s waiting for {what}"
            time.sleep(POLL_S)  # polling a condition with a deadline, not settling

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 10
        for proc in self.started:
            try:
                proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self.logs:
            log.close()


def _tree_victims() -> tuple[str, str]:
    """An interior relay (the root of group 0 in dc0, which has children) and a leaf of dc1
    (a node that is the root of no group, when there is one)."""
    config = load_config("local", {"store.row_shards": ROW_SHARDS})
    fanout, groups = config.mesh.fanout, config.mesh.shard_groups
    view = TreeView([TreeMember(n, n.partition("-")[0]) for n in NODES], fanout, groups)
    relay = view.roots(0)["dc0"]
    assert view.children(relay, 0), "the relay must have children"
    dc1 = [n for n in NODES if n.startswith("dc1")]
    roots = {view.roots(g)["dc1"] for g in range(groups)}
    leaves = [n for n in dc1 if n not in roots] or [n for n in dc1 if not view.children(n, 0)]
    return relay, leaves[0]


def test_mesh_of_processes_survives_crashes_and_intruders(tmp_path: Path) -> None:
    keys = ["--set", f"keys.curve_dir={tmp_path / 'curve'}"]
    pub = ["--set", f"keys.trainer_public_key={tmp_path / 'trainer.pub'}"]
    sign = ["--set", f"keys.trainer_signing_key={tmp_path / 'trainer.key'}"]
    assert main(["keygen", *keys, *pub, *sign]) == 0
    assert main(["keygen", *keys, *pub, *sign, "--curve", "trainer", *NODES, "mallory"]) == 0
    # The rogue: its own key pair, and the trainer's public key so that it can try to connect.
    rogue_curve = tmp_path / "rogue-curve"
    assert main(["keygen", "--set", f"keys.curve_dir={rogue_curve}", "--curve", "rogue"]) == 0
    shutil.copy(tmp_path / "curve" / "trainer.key", rogue_curve / "trainer.key")

    relay, leaf = _tree_victims()
    mesh = Mesh(tmp_path)
    try:
        for name in NODES:
            mesh.spawn(name, mesh.node_command(name, name.partition("-")[0]))
        # The nodes are up before the stream starts (they retry the trainer seed meanwhile).
        mesh.until(lambda: mesh.statuses(NODES) is not None, "the nodes to start", JOIN_DEADLINE_S)
        stream = ["--synthetic-rate", str(RATE), "--synthetic-rows", "200"]
        stream += ["--synthetic-steps", str(STEPS), "--set", "node.role=trainer"]
        mesh.spawn("trainer", mesh.node_command("trainer", "dct", *stream))

        def joined_and_receiving() -> bool:
            st = mesh.statuses(["trainer", *NODES])
            return st is not None and all(
                s["members"] == MEMBERS and any(s["vector"]) for s in st.values()
            )

        mesh.until(joined_and_receiving, "every node joined and receiving", JOIN_DEADLINE_S)

        # Intruders, while the stream runs.
        rogue_cmd = mesh.node_command("rogue", "dc0")
        rogue_cmd += ["--set", f"keys.curve_dir={rogue_curve}"]  # the last --set wins
        mesh.spawn("rogue", rogue_cmd)
        target = "dc2-n0"
        target_status = mesh.status(target)
        assert target_status is not None
        rejected_before = target_status["driver"]["decode_rejected"]
        mallory = [sys.executable, __file__, str(tmp_path), target, target_status["addr"]]
        mesh.spawn("mallory", mallory)

        # Crash an interior relay and a leaf mid-stream.
        trainer = mesh.status("trainer")
        assert trainer is not None
        at_kill = max(_seq(v) for v in trainer["vector"])
        assert at_kill < STEPS - 100, f"the stream is nearly over ({at_kill}): startup too slow"
        mesh.sigkill(relay)
        mesh.sigkill(leaf)

        def trainer_advanced(steps: int) -> Callable[[], bool]:
            def check() -> bool:
                st = mesh.status("trainer")
                return st is not None and max(_seq(v) for v in st["vector"]) >= at_kill + steps

            return check

        mesh.until(trainer_advanced(20), "the stream to go on without them", 30)
        mesh.restart(relay)
        mesh.restart(leaf)

        def recovered_from_disk() -> bool:
            st = mesh.statuses([relay, leaf])
            return st is not None and all(any(s["vector"]) for s in st.values())

        mesh.until(recovered_from_disk, "the restarted nodes to serve from disk", 30)

        def mallory_rejected() -> bool:
            st = mesh.status(target)
            return st is not None and st["driver"]["decode_rejected"] >= rejected_before + 3

        mesh.until(mallory_rejected, "the target to reject mallory's deltas", 30)

        def stream_over() -> bool:
            st = mesh.status("trainer")
            return st is not None and all(_seq(v) == STEPS for v in st["vector"])

        mesh.until(stream_over, "the end of the stream", 60)
        final = mesh.status("trainer")
        assert final is not None

        def converged() -> bool:
            st = mesh.statuses(NODES)
            return st is not None and all(
                s["merkle_root"] == final["merkle_root"] and s["vector"] == final["vector"]
                for s in st.values()
            )

        mesh.until(converged, "every node to hold the trainer's final state", CONVERGE_DEADLINE_S)

        # Nothing was lost: the trainer's final state is what it published, everyone holds it.
        last = mesh.statuses(["trainer", *NODES, "rogue"])
        assert last is not None
        assert last["trainer"]["vector"] == final["vector"]
        assert last["trainer"]["merkle_root"] == final["merkle_root"]
        # The rogue never got in, never received anything, and was turned away by CURVE.
        assert last["trainer"]["members"] == MEMBERS
        assert not any(last["rogue"]["vector"])
        assert last["trainer"]["transport"]["auth_denied"] > 0
        # Mallory's deltas were rejected by the codec (signature), and none was applied.
        assert last[target]["driver"]["decode_rejected"] >= rejected_before + 3
        assert last[target]["merkle_root"] == final["merkle_root"]
    finally:
        mesh.stop_all()
    assert all(proc.poll() is not None for proc in mesh.started)


# --- mallory: an allow-listed CURVE key, but not the trainer's signing key --------------------


async def _mallory(tmp: Path, target: str, addr: str) -> None:
    from p2prec.core.effects import Route
    from p2prec.io.node import store_layout
    from p2prec.io.transport import Transport
    from p2prec.sim.lineage import make_delta
    from p2prec.wire.codec import encode
    from p2prec.wire.signing import Signer

    config = load_config("local", {"store.row_shards": ROW_SHARDS, "store.dim": 16})
    layout = store_layout(config)
    status = orjson.loads((tmp / "state" / target / "status.json").read_bytes())
    vector = np.array(status["vector"], dtype=np.int64)  # the next step after the target's
    rng = np.random.default_rng(7)
    keys = {t: np.arange(5, dtype=np.int64) for t in layout.tables}
    delta = make_delta(layout, vector, keys, False, rng, status["epoch"])
    forged = list(encode(delta, Signer.generate()))  # signed by some other key
    unsigned = list(encode(delta, None))
    # The trainer's own signature over the real frames, then one byte of the rows flipped.
    tampered = [bytes(f) for f in encode(delta, Signer.load(tmp / "trainer.key"))]
    rows = tampered[-1]  # the rows buffer of the last table (float32 rows, no dense tensors)
    tampered[-1] = rows[:-1] + bytes([rows[-1] ^ 0x01])

    transport = Transport("mallory", tmp / "curve", lambda _envelope, _frames: None)
    await transport.start()
    assert transport.add_peer(addr, target)
    for frames in (forged, unsigned, tampered):
        assert transport.send(addr, frames, Route.TREE)
    await asyncio.Event().wait()  # until SIGTERM: the sends must not be cut short


if __name__ == "__main__":
    asyncio.run(_mallory(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
