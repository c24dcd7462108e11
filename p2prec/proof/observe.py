"""Sample what every member of a local mesh reports, over time, while faults run.

A round reads each member's ``status.json`` (epoch, Merkle root, full version vector and
watermark, counters; only when written by the member's current process within the last
seconds, see ``p2prec.localmesh.health.read_member_status``) and asks one node, in turn, for a
``consistency=validated`` recommendation (the answer names the model state that served it).
``Observer`` runs rounds on a background thread until stopped; the samples are plain data
for ``p2prec.proof.checker``.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from p2prec.localmesh.health import read_member_status
from p2prec.localmesh.runfile import RunDirError, read_mesh
from p2prec.log import get_logger

READ_TIMEOUT_S = 0.5  # a paused node does not answer: skip it this round
log = get_logger("p2prec.proof")


@dataclass(frozen=True)
class Sample:
    """What one member reported at ``t_s`` (Unix seconds; packed versions)."""

    t_s: float
    member: str
    role: str
    pid: int
    epoch: int
    root: str
    vector: tuple[int, ...]
    watermark: tuple[int, ...]
    counters: dict[str, int] = field(default_factory=dict, compare=False)
    written_s: float = field(default=0.0, compare=False)  # when the member took the status


@dataclass(frozen=True)
class ValidatedRead:
    """A ``consistency=validated`` answer: the epoch and total versions of the state read."""

    t_s: float
    member: str
    epoch: int
    total_versions: int


def sample_of(member: dict[str, Any], status: dict[str, Any], t_s: float) -> Sample:
    return Sample(
        t_s=t_s,
        member=member["id"],
        role=member["role"],
        pid=int(status["pid"]),
        epoch=int(status["epoch"]),
        root=str(status["merkle_root"]),
        vector=tuple(int(v) for v in status["vector"]),
        watermark=tuple(int(v) for v in status.get("watermark", ())),
        counters={k: int(v) for k, v in (status.get("counters") or {}).items()},
        written_s=float(status.get("written_s") or 0.0),
    )


def sample_member(member: dict[str, Any]) -> Sample | None:
    """The member's current report, or None (not running, paused, starting)."""
    status = read_member_status(member)
    return None if status is None else sample_of(member, status, time.time())


def validated_read(member: dict[str, Any], user: int) -> ValidatedRead | None:
    url = f"{member['url']}/v1/recommend?user={user}&k=5&consistency=validated"
    try:
        with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as answer:
            body = orjson.loads(answer.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None  # not ready (503), paused or restarting: nothing read
    model = body.get("model", {}) if isinstance(body, dict) else {}
    if "epoch" not in model or "total_versions" not in model:
        return None
    return ValidatedRead(time.time(), member["id"], int(model["epoch"]), model["total_versions"])


def mesh_members(run_dir: Path) -> list[dict[str, Any]]:
    try:
        members: list[dict[str, Any]] = read_mesh(run_dir)["members"]
    except RunDirError:
        return []
    return members


class Observer:
    """Rounds of samples every ``interval_s`` on a thread (``start``/``stop``)."""

    def __init__(self, run_dir: Path, interval_s: float = 0.25) -> None:
        self.run_dir = run_dir
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.reads: list[ValidatedRead] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round = 0

    def round(self) -> list[Sample]:
        """One round now (also callable without the thread); returns its samples."""
        members = mesh_members(self.run_dir)
        found = [s for s in (sample_member(m) for m in members) if s is not None]
        self.samples.extend(found)
        nodes = [m for m in members if m["role"] == "node" and m.get("url")]
        if nodes:
            read = validated_read(nodes[self._round % len(nodes)], user=self._round % 50)
            if read is not None:
                self.reads.append(read)
        self._round += 1
        return found

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="proof-observer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.round()
            except Exception as exc:  # a sampler must outlive one bad read; say what it was
                log.warning("observe_round_failed", error=repr(exc))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def latest(self) -> dict[str, Sample]:
        """Each member's newest sample."""
        out: dict[str, Sample] = {}
        for sample in self.samples:
            out[sample.member] = sample
        return out
