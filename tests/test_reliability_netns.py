"""Reliability suite, network-namespace variant of the datacenter partition (issue 6): the torch
trainer and 3 datacenters x 2 nodes, one namespace per site on a bridge, a datacenter cut off
with iptables DROP for longer than the dead-node timeout, healed; then the same checker as
``test_reliability.py`` (``p2prec.proof``) on the trainer's journal and the nodes' reports.

Needs root, iproute2 and iptables (skipped otherwise). The processes run without a supervisor:
the test writes the ``mesh.json`` the observer reads, reaches the trainer's admin API from
inside its namespace, and kills every process and deletes every namespace it made.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_netns_partition import Net, _can_build

from p2prec.io.localmesh import data_dir, key_settings, node_command
from p2prec.localmesh.runfile import write_mesh
from p2prec.proof.checker import check_all, lost_updates
from p2prec.proof.observe import Observer, Sample
from p2prec.proof.record import read_record
from p2prec.proof.report import ScenarioReport, crashes
from p2prec.trainer.journal import JOURNAL_FILE

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(not _can_build(), reason="needs root and iproute2/iptables (netns)"),
]

SITES = {"tr": ["trainer"], "dc1": ["a1", "a2"], "dc2": ["b1", "b2"], "dc3": ["c1", "c2"]}
CUT = "dc2"
MESH_PORT = 7000
HTTP_PORT = 8080
TOKEN = "netns-chaos-token"
DEADLINE_S = 60.0
CONVERGE_BOUND_S = 30.0
SETTINGS = [
    "store.row_shards=16", "store.dim=16", "trainer.hidden_units=8",
    "trainer.batch_samples=64", "trainer.samples_per_s_max=1000",
    "trainer.publish_journal=true", "trainer.validate_every_steps=20", "log.format=json",
    f"http.admin_token={TOKEN}",
]  # fmt: skip


def until(check: Any, what: str, deadline_s: float = DEADLINE_S) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < deadline_s, f"no {what} within {deadline_s:.0f} s"
        time.sleep(0.2)  # polling a condition with a deadline
    return time.monotonic() - started


def member_command(root: Path, net: Net, site: str, index: int, member: str) -> list[str]:
    host = net.addr[site]
    seeds = [] if member == "trainer" else [f"trainer@{net.addr['tr']}:{MESH_PORT}"]
    settings = [f"mesh.bind_host={host}", f"http.host={host}", f"http.port={HTTP_PORT + index}"]
    settings += SETTINGS
    command = node_command(
        root, member, site, port=MESH_PORT + index, seeds=seeds,
        role="trainer" if member == "trainer" else "node", preset="local",
        settings=[item for pair in settings for item in ("--set", pair)],
    )  # fmt: skip
    if member == "trainer":
        command[3] = "trainer"
    return ["ip", "netns", "exec", net.ns(site), *command]  # exec: the pid is the member's


def admin(net: Net, path: str) -> None:
    """POST an admin call to the trainer from inside its namespace."""
    code = (
        "import sys, urllib.request as u; r = u.Request(sys.argv[1], data=b'', method='POST'); "
        f"r.add_header('Authorization', 'Bearer {TOKEN}'); u.urlopen(r, timeout=10)"
    )
    url = f"http://{net.addr['tr']}:{HTTP_PORT}{path}"
    subprocess.run(
        ["ip", "netns", "exec", net.ns("tr"), sys.executable, "-c", code, url],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


@pytest.fixture
def net() -> Iterator[Net]:
    built = Net(list(SITES))
    try:
        built.build()
        yield built
    finally:
        built.delete()


def test_a_datacenter_cut_off_by_iptables_past_the_dead_node_timeout(
    tmp_path: Path, net: Net
) -> None:
    pytest.importorskip("torch", reason="the trainer is `p2prec trainer` (torch)")
    cli = [sys.executable, "-m", "p2prec.cli"]
    members = [m for nodes in SITES.values() for m in nodes]
    keys = key_settings(tmp_path)
    subprocess.run([*cli, "keygen", *keys], check=True, capture_output=True, timeout=60)
    subprocess.run([*cli, "keygen", *keys, "--curve", *members], check=True, timeout=60)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for site, nodes in SITES.items():
            for index, member in enumerate(nodes):
                with open(tmp_path / f"{member}.log", "wb") as log:
                    command = member_command(tmp_path, net, site, index, member)
                    procs[member] = subprocess.Popen(command, stdout=log, stderr=log)
        write_mesh(tmp_path, {"members": [
            {"id": m, "dc": site, "role": "trainer" if m == "trainer" else "node",
             "pid": procs[m].pid, "url": None, "data_dir": str(data_dir(tmp_path, m))}
            for site, nodes in SITES.items() for m in nodes
        ]})  # fmt: skip
        run(tmp_path, net, procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def run(root: Path, net: Net, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    observer = Observer(root)
    schedule: list[str] = []
    nodes = [m for site, ms in SITES.items() if site != "tr" for m in ms]
    seen: set[str] = set()

    def every_member_holds_a_model() -> bool:
        seen.clear()
        seen.update(s.member for s in observer.round() if any(s.vector))
        return len(seen) == len(procs)

    until(every_member_holds_a_model, f"a model on every member (seen: {seen})")
    observer.start()
    started = time.monotonic()
    watcher = SITES["dc1"][0]
    net.partition(CUT)
    schedule.append(f"t={time.monotonic() - started:6.2f} s  iptables DROP around {CUT}")
    took_s = until(lambda: members_alive(root, watcher) <= 7 - len(SITES[CUT]), "death")
    at_s = time.monotonic() - started
    schedule.append(f"t={at_s:6.2f} s  # {CUT} dead to {watcher} after {took_s:.1f} s")
    journal = data_dir(root, "trainer") / JOURNAL_FILE
    published = len(read_record(journal).deltas)
    until(lambda: len(read_record(journal).deltas) >= published + 20, "the stream going on")
    latest = {s.member: s for s in observer.round()}
    behind = [m for m in SITES[CUT] if latest[m].vector < latest["trainer"].vector]
    assert behind == SITES[CUT], f"the cut datacenter kept up: {latest}"
    net.heal(CUT)
    healed = time.monotonic()
    schedule.append(f"t={healed - started:6.2f} s  heal")
    admin(net, "/admin/pause")
    observer.stop()
    finals: dict[str, Sample] = {}
    converge_s = None
    while time.monotonic() - healed < DEADLINE_S:
        finals = {s.member: s for s in observer.round()}
        trainer = finals.get("trainer")
        if trainer and all(
            m in finals and finals[m].root == trainer.root and finals[m].vector == trainer.vector
            for m in nodes
        ):
            converge_s = time.monotonic() - healed
            break
        time.sleep(0.2)  # polling a condition with a deadline
    record = read_record(data_dir(root, "trainer") / JOURNAL_FILE)
    samples, alive = observer.samples, {m: p.poll() is None for m, p in procs.items()}
    report = ScenarioReport(
        "netns-partition", 0, schedule,
        lost=lost_updates(record, finals),
        violations=check_all(record, samples, [], finals, converge_s, CONVERGE_BOUND_S),
        crashes=crashes({}, Counter(), alive),
        converge_s=converge_s, deltas=len(record.deltas), rollbacks=len(record.rollbacks),
        samples=len(samples),
    )  # fmt: skip
    print(report.text())
    assert report.ok, report.text()


def members_alive(root: Path, member: str) -> int:
    """Members ``member`` holds alive (itself and the trainer included), from its status."""
    status = orjson.loads((data_dir(root, member) / "status.json").read_bytes())
    return int(status["members"])
