"""A rogue peer of the mesh: the rogue-peer scenario of the reliability suite (issue 6).

Threat model: an attacker who took over one node's host holds that node's CURVE key pair
(allow-listed: it passes the ZAP handler, and the transport even attributes its messages to
a legitimate node id) and can read the mesh's public keys, but not the trainer's Ed25519
signing key. It is stronger than an extra allow-listed key: nothing tells the rogue from the
node it impersonates. With that key (``Rogue``) it:

- captures genuine signed deltas from the mesh itself (an anti-entropy digest, then a catch-up
  request: the target answers with the trainer's original frames) and replays them, before and
  after a rollback (old-epoch steps must be fenced);
- sends what ``rogue_probes`` builds: random garbage, every frame of a genuine delta cut at
  every prefix length class, deltas unsigned / signed by another key / tampered under a valid
  signature, oversized messages, wrong message types, lying envelopes and digests, and one frame
  over the ROUTER's message size limit;

and, with a fresh key the allow-list does not hold (``refused_by_zap``), it tries to connect and
send: the ZAP handler must refuse the handshake, so that nothing reaches the node.

Everything is bounded: probe counts, every wait (``timeout_s``), the sockets' queues. Run from a
run directory of ``p2prec up`` (``load_run_dir``) or with explicit addresses and key paths
(``Member``, ``Rogue``). ``python -m p2prec.proof.rogue --run-dir DIR`` attacks a live local
mesh and prints, per target, what it sent and what the target's counters show.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import zmq

from p2prec.config import Config, load_config
from p2prec.core.versions import VersionVector
from p2prec.io.curve import (
    handshake_refused,
    load_keypair,
    load_public_key,
    public_key_file,
    secret_key_file,
    watch_handshakes,
)
from p2prec.io.node import store_layout
from p2prec.io.transport import Envelope, Transport
from p2prec.localmesh.runfile import read_mesh
from p2prec.log import get_logger
from p2prec.proof import rogue_probes as probes
from p2prec.proof.rogue_probes import Envelopes, Layer, Probe
from p2prec.wire.codec import decode, encode
from p2prec.wire.errors import RemoteProtocolError
from p2prec.wire.messages import MsgType, ParamDelta, SyncDigest, SyncRequest
from p2prec.wire.signing import Verifier

log = get_logger(__name__)

HOST = "127.0.0.1"
INBOX_MAX = 8192  # messages kept from the mesh's answers
SEND_HWM = 100_000  # the rogue's own queue: every probe is queued, none dropped on our side
SEND_TIMEOUT_MS = 2000
POLL_S = 0.05
QUIET_S = 0.5  # an answer is complete after this long without a new message
REPLAY_MAX = 64  # genuine messages replayed per target and round
STATUS_STALE_S = 2.0  # status.json older than this: the member's owner task is not running


@dataclass(frozen=True)
class Member:
    """A mesh member the rogue can reach."""

    node_id: str
    dc: str
    role: str
    addr: str  # host:port of its mesh ROUTER
    data_dir: Path  # where its status.json is (the local mesh's; unused for remote targets)

    def status_age_s(self) -> float:
        """Seconds since the member last wrote status.json (its owner task does, at least
        every 1 s: a node whose task died keeps its process and HTTP API but stops writing)."""
        try:
            return time.time() - (self.data_dir / "status.json").stat().st_mtime
        except OSError:
            return float("inf")

    def status(self) -> dict[str, Any] | None:
        try:
            data = orjson.loads((self.data_dir / "status.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class RunMesh:
    """What the rogue knows of a local mesh: its members, keys and configuration."""

    members: dict[str, Member]
    config: Config  # a node's: store layout, wire limits, key paths

    @property
    def curve_dir(self) -> Path:
        return Path(self.config.keys.curve_dir)

    @property
    def n_shards(self) -> int:
        return store_layout(self.config).n_shards

    def verifier(self) -> Verifier:
        return Verifier.load(self.config.keys.trainer_public_key)


def load_run_dir(run_dir: Path) -> RunMesh:
    """The members of ``p2prec up``'s mesh in ``run_dir`` and a node's configuration."""
    mesh = read_mesh(run_dir)
    members = {
        m["id"]: Member(
            m["id"], m["dc"], m["role"], f"{HOST}:{m['mesh_port']}", Path(m["data_dir"])
        )
        for m in mesh["members"]
    }
    node = next(m for m in mesh["members"] if m["role"] == "node")
    return RunMesh(members, config_of_command(node["command"]))


def config_of_command(command: Sequence[str]) -> Config:
    """The configuration a member's ``p2prec node|trainer`` command line loads."""
    from p2prec.cli import _parse_sets

    preset = command[command.index("--config") + 1] if "--config" in command else "lan"
    sets = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--set"]
    return load_config(preset, _parse_sets(sets))


def node_counters(status: dict[str, Any]) -> dict[str, int]:
    """The counters of a member's status.json that say where hostile input was stopped."""
    transport, driver, replica = status["transport"], status["driver"], status["counters"]
    return {
        "malformed": transport["malformed"],
        "spoofed": transport["spoofed"],
        "auth_denied": transport["auth_denied"],
        "internal_errors": transport["internal_errors"],
        "callback_errors": transport["callback_errors"],
        "decode_rejected": driver["decode_rejected"],
        "rejected": replica["rejected"],
        "fenced": replica["fenced"],
        "duplicates": replica["duplicates"],
    }


#: The counter each layer's refusals show up in.
LAYER_COUNTER = {
    Layer.TRANSPORT: "malformed",
    Layer.SPOOFED: "spoofed",
    Layer.CODEC: "decode_rejected",
    Layer.REPLICA: "rejected",
}
#: Counters that only hostile input (or a bug) moves: the mesh's own traffic leaves them at 0
#: (duplicates and fenced steps also happen in normal operation).
HOSTILE_COUNTERS = (*LAYER_COUNTER.values(), "internal_errors", "callback_errors")


@dataclass
class Tally:
    """What the rogue sent to one target: messages by attack kind and by stopping layer."""

    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    by_layer: collections.Counter[Layer] = field(default_factory=collections.Counter)

    def add(self, sent: Sequence[Probe]) -> None:
        self.by_kind.update(p.kind for p in sent)
        self.by_layer.update(p.layer for p in sent)

    def expected(self) -> dict[str, int]:
        """The least rise of each counter of ``node_counters`` these messages must cause."""
        return {c: self.by_layer[layer] for layer, c in LAYER_COUNTER.items()}

    def total(self) -> int:
        return sum(self.by_kind.values())


@dataclass
class Capture:
    """Genuine signed messages the rogue obtained from the mesh."""

    deltas: list[list[bytes]] = field(default_factory=list)
    control: list[list[bytes]] = field(default_factory=list)  # Validated and Rollback

    def richest_delta(self) -> list[bytes]:
        """The captured delta with the most frames (rows of every table)."""
        if not self.deltas:
            raise RuntimeError("nothing captured: the mesh answered no catch-up request")
        return max(self.deltas, key=lambda frames: (len(frames), sum(map(len, frames))))


class Rogue:
    """A peer holding a stolen, allow-listed CURVE key pair (``identity``'s, in ``curve_dir``).

    It listens with that key (a ``Transport``, so that the mesh's answers reach it) and sends
    raw multiparts on its own DEALER sockets: the transport's ``send`` would refuse to send
    most probes."""

    def __init__(self, curve_dir: Path, identity: str, n_shards: int, verifier: Verifier) -> None:
        self.curve_dir, self.identity, self.n_shards = curve_dir, identity, n_shards
        self.verifier = verifier
        self.keypair = load_keypair(secret_key_file(curve_dir, identity))
        self.inbox: collections.deque[list[bytes]] = collections.deque(maxlen=INBOX_MAX)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._dealers: dict[str, zmq.Socket[bytes]] = {}
        self._listener = Transport(identity, curve_dir, self._on_message)
        self.env = Envelopes("", identity)

    @classmethod
    def of_run(cls, mesh: RunMesh, identity: str) -> Rogue:
        return cls(mesh.curve_dir, identity, mesh.n_shards, mesh.verifier())

    async def start(self) -> None:
        addr = await self._listener.start()
        self.env = Envelopes(addr, self.identity)
        log.info("rogue_started", identity=self.identity, addr=addr)

    async def close(self) -> None:
        await self._listener.close()
        for dealer in self._dealers.values():
            dealer.close(linger=0)
        self._ctx.term()

    def _on_message(self, _envelope: Envelope, frames: list[zmq.Frame]) -> None:
        self.inbox.append([f.bytes for f in frames])

    # -- sending --------------------------------------------------------------------------------

    def send(self, target: Member, sent: Sequence[Probe], tally: Tally | None = None) -> int:
        """Queue every probe for ``target`` on this rogue's DEALER to it; how many were queued
        (a send that finds no room within ``SEND_TIMEOUT_MS`` ends the batch)."""
        dealer = self._dealer(target)
        queued = 0
        for probe in sent:
            try:
                dealer.send_multipart(probe.frames)
            except zmq.Again:
                log.warning("rogue_send_blocked", target=target.node_id, queued=queued)
                break
            queued += 1
        if tally is not None:
            tally.add(sent[:queued])
        return queued

    def _dealer(self, target: Member) -> zmq.Socket[bytes]:
        dealer = self._dealers.get(target.addr)
        if dealer is None:
            dealer = self._dealers[target.addr] = self._connect(target, self.keypair)
        return dealer

    def _connect(self, target: Member, keypair: tuple[bytes, bytes]) -> zmq.Socket[bytes]:
        sock = self._socket(target, keypair)
        sock.connect(f"tcp://{target.addr}")
        return sock

    def _socket(self, target: Member, keypair: tuple[bytes, bytes]) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        sock.curve_publickey, sock.curve_secretkey = keypair
        sock.curve_serverkey = load_public_key(public_key_file(self.curve_dir, target.node_id))
        sock.sndhwm, sock.sndtimeo, sock.linger = SEND_HWM, SEND_TIMEOUT_MS, 0
        return sock

    def over_link(self, target: Member) -> bool:
        """One frame over the target's message size limit, on a socket of its own (libzmq
        drops the connection, and whatever was queued behind the frame with it)."""
        sock = self._connect(target, self.keypair)
        try:
            sock.send_multipart(probes.over_link(self.env).frames)
            return True
        except zmq.Again:
            return False
        finally:
            sock.close(linger=SEND_TIMEOUT_MS)

    # -- the mesh's answers ---------------------------------------------------------------------

    async def ask(
        self, target: Member, frames: list[bytes], route: str, timeout_s: float
    ) -> list[list[bytes]]:
        """Send one well-formed message and collect what comes back until the answer has been
        quiet for ``QUIET_S`` (or ``timeout_s`` passed)."""
        self.inbox.clear()
        self._dealer(target).send_multipart([self.env.of(route), *frames])
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        seen, quiet_since = 0, loop.time()
        while loop.time() < end:
            await asyncio.sleep(POLL_S)
            if len(self.inbox) != seen:
                seen, quiet_since = len(self.inbox), loop.time()
            elif seen and loop.time() - quiet_since >= QUIET_S:
                break
        answers = list(self.inbox)
        self.inbox.clear()
        return answers

    async def digest_of(self, target: Member, timeout_s: float) -> SyncDigest | None:
        """The target's own anti-entropy digest: sent in reply to one of ours."""
        zeros = VersionVector.zeros(self.n_shards)
        ours = SyncDigest(
            self.identity, 1, bytes(16), zeros, np.zeros(self.n_shards, np.uint64), zeros, False
        )
        for frames in await self.ask(target, _frames(ours), "mesh", timeout_s):
            msg = _decode_or_none(frames, self.verifier)
            if isinstance(msg, SyncDigest) and msg.is_reply:
                return msg
        return None

    async def capture(self, target: Member, since: Sequence[int], timeout_s: float) -> Capture:
        """Genuine signed messages: the target's catch-up answer for every shard ``since``."""
        shards = tuple(range(self.n_shards))
        request = SyncRequest(self.identity, shards, tuple(int(v) for v in since), False)
        capture = Capture()
        for frames in await self.ask(target, _frames(request), "mesh", timeout_s):
            kind = _signed_type(frames, self.verifier)
            if kind is MsgType.DELTA:
                capture.deltas.append(frames)
            elif kind in (MsgType.VALIDATED, MsgType.ROLLBACK):
                capture.control.append(frames)
        log.info("rogue_captured", target=target.node_id, deltas=len(capture.deltas))
        return capture

    # -- attacks --------------------------------------------------------------------------------

    def hostile(
        self,
        rng: np.random.Generator,
        capture: Capture,
        digest: SyncDigest,
        victim: str,
        count: int,
        evict: Member | None = None,
    ) -> list[Probe]:
        """Every probe class against a node whose digest is ``digest``; ``count`` garbage
        messages; ``victim``: a node id the spoofed envelopes claim; ``evict``: a member the
        membership lies declare dead (none: no membership lies)."""
        genuine = capture.richest_delta()
        delta = decode(genuine, self.verifier)
        assert isinstance(delta, ParamDelta)
        forged = probes.next_step(delta, digest.vector.packed.tolist())
        env = self.env
        return [
            *probes.garbage(rng, env, count),
            *probes.truncated(env, genuine),
            *probes.forged(env, forged, genuine),
            *probes.oversized(env),
            *probes.wrong_types(env, genuine, self.n_shards),
            *probes.requests(env, self.n_shards),
            *probes.bad_envelopes(env, genuine, victim),
            *probes.lying_digests(env, digest.vector.packed.tolist(), digest.epoch),
            *self.replays(capture, "replayed"),
            *(self.membership_lies(evict) if evict is not None else []),
        ]

    def membership_lies(self, evict: Member) -> list[Probe]:
        return probes.membership_lies(self.env, (evict.node_id, evict.addr, evict.dc))

    def replays(self, capture: Capture, kind: str) -> list[Probe]:
        """The captured genuine messages again (at most ``REPLAY_MAX`` of them)."""
        messages = [*capture.control, *capture.deltas][:REPLAY_MAX]
        return probes.replayed(self.env, messages, kind)

    async def refused_by_zap(self, target: Member, timeout_s: float) -> bool:
        """Connect with a key pair the allow-list does not hold and send a forged delta and a
        catch-up request: True once the target refused the handshake (within ``timeout_s``)."""
        public, secret = zmq.curve_keypair()
        sock = self._socket(target, (public, secret))
        # Watched before it connects: a refusal can come before the first send.
        monitor = watch_handshakes(sock, f"inproc://rogue-zap-{id(sock)}")
        sock.connect(f"tcp://{target.addr}")
        try:
            request = SyncRequest(self.identity, (0,), (0,), False)
            # Refused before this send (seen once on a loaded host): the pipe is gone and
            # nothing is queued to deliver.
            with contextlib.suppress(zmq.Again):
                sock.send_multipart([self.env.of("mesh"), *_frames(request)], zmq.NOBLOCK)
            return await _until(lambda: handshake_refused(monitor), timeout_s)
        finally:
            sock.disable_monitor()
            sock.close(linger=0)
            monitor.close(linger=0)


def _frames(msg: Any) -> list[bytes]:
    return [bytes(f) for f in encode(msg, None)]


def _decode_or_none(frames: list[bytes], verifier: Verifier) -> Any:
    try:
        return decode(frames, verifier)
    except RemoteProtocolError:
        return None


def _signed_type(frames: list[bytes], verifier: Verifier) -> MsgType | None:
    """The type of a message carrying a valid trainer signature, else None."""
    msg = _decode_or_none(frames, verifier)
    if msg is None or not frames[1]:
        return None
    return MsgType(orjson.loads(frames[0])["t"])


async def _until(condition: Callable[[], bool], timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(POLL_S)
    return True


# --- one attack on one target, and the command line --------------------------------------------


@dataclass
class Outcome:
    """One target's attack: what was sent, what its counters did, how ZAP answered."""

    target: str
    tally: Tally
    zap_refused: bool  # the unknown key's handshake was refused
    zap_leaked: dict[str, int]  # HOSTILE_COUNTERS' rises while only the unknown key sent: 0s
    before: dict[str, int]
    after: dict[str, int] = field(default_factory=dict)
    captured: int = 0
    status_age_s: float = 0.0  # at the end of ``settle``: a stale status means a stuck node

    def rise(self) -> dict[str, int]:
        return {k: self.after.get(k, v) - v for k, v in self.before.items()}

    def shortfall(self) -> dict[str, int]:
        """Counters that rose less than the probes sent to their layer require."""
        rise = self.rise()
        return {c: n - rise[c] for c, n in self.tally.expected().items() if rise[c] < n}


async def attack(
    rogue: Rogue,
    target: Member,
    *,
    victim: str,
    count: int,
    seed: int,
    timeout_s: float,
    over_link: bool = True,
    evict: Member | None = None,
) -> Outcome:
    """The unknown key first (alone, so that a leak would show in the counters), then every
    probe with the stolen key; returns before the target has necessarily counted them all
    (``settle``); ``evict``: see ``Rogue.hostile``."""
    before = _counters(target)
    refused = await rogue.refused_by_zap(target, timeout_s)
    after_zap = _counters(target)
    leaked = {k: after_zap[k] - before[k] for k in HOSTILE_COUNTERS}
    digest = await rogue.digest_of(target, timeout_s)
    if digest is None:
        raise RuntimeError(f"{target.node_id} sent no digest back within {timeout_s} s")
    capture = await rogue.capture(target, digest.watermark.packed.tolist(), timeout_s)
    tally = Tally()
    rng = np.random.default_rng(seed)
    rogue.send(target, rogue.hostile(rng, capture, digest, victim, count, evict), tally)
    if over_link:
        rogue.over_link(target)
    outcome = Outcome(target.node_id, tally, refused, leaked, before, captured=len(capture.deltas))
    log.info("rogue_attacked", target=target.node_id, sent=tally.total(), zap_refused=refused)
    return outcome


async def settle(outcome: Outcome, target: Member, timeout_s: float) -> bool:
    """Wait until the target's counters show every refusal the probes require; record them."""

    def counted() -> bool:
        outcome.after = _counters(target)
        return not outcome.shortfall()

    done = await _until(counted, timeout_s)
    outcome.status_age_s = target.status_age_s()
    return done


async def still_ticking(outcomes: Sequence[Outcome], members: dict[str, Member]) -> bool:
    """After ``STATUS_STALE_S`` more, whether every target still writes its status (records
    each one's age): a node whose owner task died keeps its pid, so only this shows it."""
    await asyncio.sleep(STATUS_STALE_S)
    for outcome in outcomes:
        outcome.status_age_s = members[outcome.target].status_age_s()
    return all(o.status_age_s <= STATUS_STALE_S for o in outcomes)


def _counters(member: Member) -> dict[str, int]:
    status = member.status()
    if status is None:
        raise RuntimeError(f"{member.node_id}: no status.json in {member.data_dir}")
    return node_counters(status)


def describe(outcome: Outcome) -> str:
    """A few lines for a person: sent by layer, counter rises, ZAP."""
    layers = ", ".join(
        f"{layer.value} {n}"
        for layer, n in sorted(outcome.tally.by_layer.items(), key=lambda x: x[0].value)
    )
    rise = ", ".join(f"{k} +{v}" for k, v in outcome.rise().items() if v)
    zap = "refused" if outcome.zap_refused else "NOT refused"
    ticking = "ticking" if outcome.status_age_s <= STATUS_STALE_S else "STUCK (stale status)"
    return (
        f"{outcome.target}: sent {outcome.tally.total()} ({layers}); captured "
        f"{outcome.captured} genuine deltas; counters {rise or 'unchanged'}; unknown key {zap}; "
        f"{ticking}"
    )


async def _main(args: argparse.Namespace) -> int:
    mesh = load_run_dir(Path(args.run_dir))
    nodes = [m for m in mesh.members.values() if m.role == "node"]
    identity = args.identity or nodes[-1].node_id
    targets = args.target or [m.node_id for m in nodes if m.node_id != identity][:2]
    rogue = Rogue.of_run(mesh, identity)
    await rogue.start()
    outcomes = []
    try:
        for i, name in enumerate(targets):
            evict = mesh.members[args.evict] if args.evict and i == 0 else None
            outcome = await attack(
                rogue, mesh.members[name], victim=nodes[0].node_id, count=args.count,
                seed=args.seed + i, timeout_s=args.timeout_s, evict=evict,
            )  # fmt: skip
            outcomes.append(outcome)
        for outcome in outcomes:
            await settle(outcome, mesh.members[outcome.target], args.timeout_s)
        ticking = await still_ticking(outcomes, mesh.members)
        for outcome in outcomes:
            print(describe(outcome))
        failed = not ticking or any(o.shortfall() or not o.zap_refused for o in outcomes)
    finally:
        await rogue.close()
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m p2prec.proof.rogue", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--run-dir", default=".p2prec", help="the run directory of `p2prec up`")
    parser.add_argument(
        "--as", dest="identity", help="the node whose key is stolen (default: the last node)"
    )
    parser.add_argument(
        "--target", action="append", help="a member to attack (repeatable; default: two nodes)"
    )
    parser.add_argument("--count", type=int, default=60, help="garbage messages per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--evict", help="a member the first target is told is dead (SWIM gossip; default: none)"
    )
    parser.add_argument("--timeout-s", type=float, default=10.0, help="bound on every wait")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
