"""The HTTP API of real processes: `p2prec trainer` (torch) and one `p2prec node`, found through
the URL in their status.json, queried, paused and resumed over HTTP, stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from p2prec.cli import main
from p2prec.io.localmesh import data_dir, free_port, key_settings, node_command, read_status
from p2prec.log import reset_logging

TOKEN = "process-token"
DEADLINE_S = 90.0  # torch import and the first steps on a busy 2-core machine
SHARED = {  # keys that must agree between the trainer and the node
    "store.dim": 8,
    "store.row_shards": 8,
    "mesh.shard_groups": 2,
    "http.admin_token": TOKEN,
    "log.format": "json",
}
TRAINER = {
    "trainer.device": "cpu",
    "trainer.batch_samples": 64,
    "trainer.hidden_units": 8,
    "trainer.samples_per_s_max": 400,
    "trainer.validate_every_steps": 10,
    "trainer.stream_users_max": 200,
    "trainer.stream_items_max": 50,
}


def sets(pairs: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in pairs.items():
        out += ["--set", f"{key}={value}"]
    return out


def call(url: str, method: str = "GET", body: Any = None, token: str = "") -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _decode(response.read(), response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, _decode(exc.read(), exc.headers)


def _decode(raw: bytes, headers: Any) -> Any:
    if headers.get_content_type() == "application/json":
        return orjson.loads(raw)
    return raw.decode()


def until(condition: Callable[[], Any], what: str) -> Any:
    end = time.monotonic() + DEADLINE_S
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling a condition with a deadline, not settling


class Processes:
    """Processes started here, each stopped by its pid (SIGTERM, then SIGKILL)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        log.close()
        self.procs[name] = proc
        return proc

    def url(self, name: str) -> str:
        def found() -> str | None:
            proc = self.procs[name]
            assert proc.poll() is None, f"{name} exited: {self.log(name)[-2000:]}"
            status = read_status(self.root, name)
            return status.get("url") if status else None

        url: str = until(found, f"the URL of {name}")
        return url

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str) -> int:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            return proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
        reset_logging()


def start_mesh(processes: Processes) -> tuple[str, str]:
    root = processes.root
    options = key_settings(root)
    assert main(["keygen", *options]) == 0
    assert main(["keygen", *options, "--curve", "trainer", "n1"]) == 0
    port = free_port()
    trainer = [sys.executable, "-m", "p2prec.cli", "trainer", "--config", "local", *options]
    trainer += sets({**SHARED, **TRAINER, "node.data_dir": data_dir(root, "trainer")})
    trainer += sets({"mesh.port": port, "node.id": "trainer", "node.dc": "dc-t"})
    processes.start("trainer", trainer)
    node = node_command(root, "n1", "dc1", seeds=[f"trainer@127.0.0.1:{port}"])
    processes.start("n1", node + sets(SHARED))
    return processes.url("trainer"), processes.url("n1")


def test_real_processes_serve_the_http_api(processes: Processes) -> None:
    trainer, node = start_mesh(processes)
    until(lambda: call(node + "/readyz")[0] == 200, "the node ready")
    status, answer = call(node + "/v1/recommend?user=3&k=5")
    assert status == 200 and 1 <= len(answer["items"]) <= 5, answer
    assert answer["model"]["epoch"] >= 1 and answer["model"]["consistency"] == "latest"
    items = [i["item"] for i in answer["items"]]
    status, answer = call(node + "/v1/score", "POST", {"user": 3, "items": items})
    assert status == 200 and [s["item"] for s in answer["scores"]] == items
    status, answer = call(node + "/v1/recommend?user=3&k=-1")
    assert (status, answer["param"]) == (400, "k")
    status, answer = call(node + "/v1/status")
    assert (answer["id"], answer["url"], answer["pid"]) == ("n1", node, processes.procs["n1"].pid)
    status, text = call(node + "/metrics")
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"p2prec_deltas_applied", "p2prec_update_latency_seconds"} <= names

    assert call(trainer + "/admin/pause", "POST")[0] == 401
    assert call(trainer + "/admin/pause", "POST", token=TOKEN)[0] == 200
    quiet = call(trainer + "/v1/status")[1]
    assert quiet["paused"] is True and quiet["role"] == "trainer"
    until(lambda: call(node + "/v1/status")[1]["merkle_root"] == quiet["merkle_root"], "same root")
    assert call(trainer + "/v1/status")[1]["merkle_root"] == quiet["merkle_root"]  # still quiet
    assert call(trainer + "/admin/resume", "POST", token=TOKEN)[0] == 200
    until(
        lambda: call(trainer + "/v1/status")[1]["total_versions"] > quiet["total_versions"],
        "training again",
    )
    assert processes.stop("n1") == 0 and processes.stop("trainer") == 0
