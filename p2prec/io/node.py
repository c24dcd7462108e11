"""The asyncio driver of one replica: transport, timers, persistence (DESIGN.md section 3).

One owner task holds the replica: messages from the transport are decoded (signatures
verified) and handed to ``Replica.handle``; one timer wakes the replica at its
``next_deadline()``; ``Send`` effects go to the transport, ``Persist`` effects to the node's log
on disk, ``Note`` effects to structlog. The same driver runs the trainer's ``Publisher``.

Only the driver's event loop changes the replica, and it does so holding ``state_lock``;
readers on other threads (a serving thread, ``p2prec.serve.server``) read the replica holding
it too, so they see a delta applied whole or not at all. Work that changes node state from
another thread goes through ``call_in_owner``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from p2prec.config import Config, parse_seed
from p2prec.core.effects import Effect, Incoming, Note, Persist, Send
from p2prec.core.fencing import Signed
from p2prec.core.membership import Membership
from p2prec.core.membership_config import MembershipConfig
from p2prec.core.membership_messages import from_body, to_body
from p2prec.core.publisher import Publisher, StaleHead
from p2prec.core.replica import Replica, ReplicaConfig
from p2prec.io.checkpoint import Batch, CheckpointSnapshots
from p2prec.io.persistence import NodeDisk
from p2prec.io.priority import background_executor
from p2prec.io.transport import Envelope, PeerClass, Transport
from p2prec.io.turns import HostTurns
from p2prec.log import get_logger
from p2prec.model.layout import StoreLayout
from p2prec.model.snapshot import parts_nbytes
from p2prec.model.store import ParamStore
from p2prec.wire.codec import decode, encode
from p2prec.wire.errors import RemoteProtocolError
from p2prec.wire.messages import (
    MembershipEnvelope,
    ParamDelta,
    Rollback,
    SyncDigest,
    SyncRequest,
    Validated,
)
from p2prec.wire.signing import Signer, Verifier

log = get_logger("p2prec.node")
T = TypeVar("T")
# data_dir/status.json is rewritten STATUS_INTERVAL_S after the state it shows (vector,
# watermark, epoch, members) stopped changing, at least every STATUS_REFRESH_S while it keeps
# changing (a stream of deltas), and every STATUS_REFRESH_S when idle (readers call a file
# older than 2 s stale). Rewriting an idle member's every 0.2 s cost it 2.5 ms of CPU per
# second (measured in-process, 9 idle members: 6.1 -> 3.6 ms/s without it).
STATUS_INTERVAL_S = 0.2
STATUS_REFRESH_S = 1.0
STATUS_RETRY_S = 0.02  # while the previous status.json is still being written
APPLIED_MAX = 100_000  # applied-delta latencies kept (written to applied.json on close)
LATENCY_FEED_MAX = 10_000  # latencies waiting for the metrics (the oldest drop first)
CLOSE_WAIT_S = 2.0  # how long close() waits for the owner task to stop
OWNER_RETRY_S = 0.5  # wait after an owner-task step raised, instead of spinning on it
DIGEST_STEP_SHARDS = 4  # shards hashed per loop turn by validated_head
# Pause between two steps of validated_head: back to back, the trainer's hashing of a whole
# store (~60-90 ms of CPU at 500k rows) took its share of a loaded host at once, its stream
# fell behind and then published the late deltas in a burst.
DIGEST_STEP_PAUSE_S = 0.02
DIGEST_ATTEMPTS = 3  # stepped validated_head begun again at most this often, then at once
# Share by which each checkpoint's wait and log threshold vary, per member: members on one host
# fed one stream (p2prec up, tests, benchmarks) otherwise checkpoint in one burst. At +-25%,
# 36 members' first checkpoints fell within ~6 s of each other, a burst that put p99 at
# 1.7-2.4 s in compare.py's 30 s stream; at +-50%, 0.27-1.3 s (alternated runs).
CHECKPOINT_JITTER = 0.5
CHECKPOINT_TURN_RETRY_S = 0.25  # a due checkpoint without a turn asks again after this
MIB = 1 << 20


def rolled_back_to_watermark(store: ParamStore, rollback: Rollback) -> bool:
    """True when ``rollback`` took the store to its validation watermark (the head is then a
    validated state, which may be announced as validated again in the new epoch)."""
    return rollback.to == store.watermark and store.vector == store.watermark


def freeze_heap() -> None:
    """Move every object alive now (the store, its step records, the delta log) out of the
    cyclic collector's generations (``gc.freeze``, as Instagram's servers do after start-up):
    a full collection scanned them all, 45-56 ms of a node that answers queries. They are
    still freed by reference counting (none of them form cycles). After recovery and after
    every checkpoint."""
    gc.freeze()


def replica_config(config: Config) -> ReplicaConfig:
    mesh = config.mesh
    return ReplicaConfig(
        fanout=mesh.fanout,
        shard_groups=mesh.shard_groups,
        publisher_id=mesh.publisher_id,
        anti_entropy_interval_s=mesh.anti_entropy_interval_s,
        wan_sync_share=mesh.wan_sync_share,
        repair_grace_s=mesh.repair_grace_s,
        request_timeout_s=mesh.request_timeout_s,
        gap_buffer_max=mesh.gap_buffer_max,
        delta_log_bytes_max=mesh.delta_log_bytes_max,
    )


def membership_config(config: Config) -> MembershipConfig:
    mesh = config.mesh
    return MembershipConfig(
        probe_interval_s=mesh.probe_interval_s,
        probe_timeout_s=mesh.probe_timeout_s,
        suspicion_mult=mesh.suspicion_mult,
        gossip_interval_s=mesh.gossip_interval_s,
        gossip_nodes=mesh.gossip_nodes,
        dead_node_reclaim_s=mesh.dead_node_reclaim_s,
        rejoin_interval_s=mesh.rejoin_interval_s,
    )


def store_layout(config: Config) -> StoreLayout:
    store = config.store
    return StoreLayout(
        row_shards=store.row_shards, dim=store.dim, tables=tuple(store.tables), dtype=store.dtype
    )


@dataclass
class DriverCounters:
    decode_rejected: int = 0  # frames that failed decoding or signature verification
    persisted: int = 0
    checkpoints: int = 0
    owner_errors: int = 0  # owner-task steps that raised (logged; the task goes on)
    owner_turns: int = 0  # owner-task steps: timers and messages that moved a deadline


class NodeDriver:
    """Runs one replica (a node, or the trainer's publisher) in this process."""

    def __init__(self, config: Config, verifier: Verifier, signer: Signer | None = None) -> None:
        self.config = config
        self.verifier = verifier
        self.signer = signer  # the trainer's: only the publisher signs
        self.limits = config.wire.limits()
        self.counters = DriverCounters()
        self.disk = NodeDisk(config.node.data_dir, release_pages=config.node.release_written_pages)
        self.transport = Transport.from_config(config, self._on_message, self._peer_class)
        self.replica: Replica | None = None
        self.membership: Membership | None = None  # the replica's, typed (status, tests)
        self.http_url: str | None = None  # set by the HTTP server (p2prec.serve)
        # Held by the owner loop while it changes the replica, by other threads while they
        # read it (module docstring).
        self.state_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._waiting_until = 0.0  # the deadline the owner task sleeps until
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._checkpointed: tuple[np.ndarray, np.ndarray] | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self._status_writing: asyncio.Task[None] | None = None  # status.json, by a thread
        self._logged_at_checkpoint = 0  # disk.bytes_logged when the last checkpoint began
        self._next_checkpoint = 0.0  # owner-task times (self.now())
        self._jitter = random.Random()
        self._log_ratio_spread = self._spread()  # redrawn at every checkpoint
        mesh = config.mesh
        self._turns = (  # shared with the other members of this host, if configured
            HostTurns(mesh.checkpoint_turns_dir, mesh.checkpoint_turns)
            if mesh.checkpoint_turns_dir
            else None
        )
        # The checkpoint's builds and writes: on a thread below replication (io/priority.py)
        # unless the checkpoint falls behind the log (``_checkpoint_behind``).
        self._background = background_executor("checkpoint", idle=False)
        self._background_idle = (
            background_executor("checkpoint-idle", idle=True)
            if mesh.checkpoint_sched_idle
            else None
        )
        self._next_status = 0.0
        self._status_written_at = -math.inf
        self._status_shown = b""  # the state the last status.json showed (_status_state)
        self._state_changed_at = -math.inf  # when a delta last moved the vector (owner time)
        self._t0 = time.monotonic()
        self._dc_of: dict[str, str] = {}
        # (created_ms, publish -> applied ms) of the last applied deltas, for benchmarks
        self.applied: collections.deque[tuple[int, float]] = collections.deque(maxlen=APPLIED_MAX)
        # The same latencies (ms) until the metrics observe them (``UpdateLatencyFeed``).
        self.latency_feed: collections.deque[float] = collections.deque(maxlen=LATENCY_FEED_MAX)

    @property
    def is_publisher(self) -> bool:
        return self.config.node.role == "trainer"

    def now(self) -> float:
        return time.monotonic() - self._t0

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> str:
        self._loop = asyncio.get_running_loop()
        addr = await self.transport.start()
        store = ParamStore(
            store_layout(self.config),
            self.config.store.undo_rows_max,
            self.config.store.changelog_rows_max,
            self.config.store.initial_rows,
        )
        seeds = []
        for seed in self.config.mesh.seeds:
            node_id, seed_addr = parse_seed(seed)
            self.transport.add_peer(seed_addr, node_id)
            seeds.append(seed_addr)
        membership = Membership(
            self.config.node.id,
            addr,
            self.config.node.dc,
            membership_config(self.config),
            np.random.default_rng(),
            seeds,
            admit=self.transport.has_key_for,
        )
        self.membership = membership
        kind = Publisher if self.is_publisher else Replica
        self.replica = kind(
            self.config.node.id,
            addr,
            self.config.node.dc,
            store,
            membership,
            replica_config(self.config),
            np.random.default_rng(),
        )
        self._recover()
        freeze_heap()
        self._task = asyncio.create_task(self._run(), name="p2prec-node")
        log.info(
            "node_started",
            addr=addr,
            role=self.config.node.role,
            root=store.root.hex(),
            vector=store.vector.summary(),
        )
        return addr

    async def close(self) -> None:
        """Stop the owner task, checkpoint, close the disk and the transport. Idempotent and
        bounded (``CLOSE_WAIT_S`` for the task, then the transport's own bound), also while
        peers keep sending. A cancellation of ``close`` itself still closes the disk and the
        transport, then propagates."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                # Not ``await task``: that would have to swallow CancelledError, including one
                # aimed at close() itself. asyncio.wait raises only the latter, and is bounded.
                await asyncio.wait([task], timeout=CLOSE_WAIT_S)
                self._reap(task)
            writing = [t for t in (self._checkpointing, self._status_writing) if t is not None]
            if writing:  # not cancelled: a thread may be writing
                await asyncio.wait(writing, timeout=CLOSE_WAIT_S)
        finally:
            try:
                self._final_checkpoint()
            finally:
                self._write_applied()
                for executor in (self._background, self._background_idle):
                    if executor is not None:
                        executor.shutdown(wait=False, cancel_futures=True)
                self.disk.close()
                if self._turns is not None:
                    self._turns.close()
                await self.transport.close()

    def _final_checkpoint(self) -> None:
        running = self._checkpointing
        if running is not None and not running.done():
            # A worker thread may still replace a shard file: writing it too could leave the
            # older snapshot last. The log segments stay; recovery replays them.
            log.error("final_checkpoint_skipped", reason="a checkpoint write is still running")
            return
        self.checkpoint()

    def _write_applied(self) -> None:
        """``data_dir/applied.json``: [created_ms, latency_ms] of recent applied deltas."""
        path = self.disk.root / "applied.json"
        path.write_bytes(orjson.dumps(list(self.applied)))

    def _reap(self, task: asyncio.Task[None]) -> None:
        if not task.done():
            log.error("node_task_stuck", wait_s=CLOSE_WAIT_S)
        elif not task.cancelled() and (exc := task.exception()) is not None:
            log.error("node_task_failed", exc_info=exc)

    async def call_in_owner(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the driver's event loop, awaited from any loop: how another thread
        changes node state (an admin call on the serving thread)."""
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop():
            return fn()

        async def call() -> T:
            return fn()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))

    # -- recovery and checkpoints ---------------------------------------------------------------

    def _recover(self) -> None:
        """Snapshots, then the fencing state, then the messages logged since the snapshots."""
        replica = self._replica
        restored = self.disk.load_snapshots(replica.store)
        for frames in self.disk.load_control():
            self._restore_control(frames)
        replayed = 0
        for frames in self.disk.replay():
            msg = self._decode(frames)
            if msg is not None:
                replica.handle(Incoming(replica.addr, msg, frames), self.now())
                replayed += 1
        self._mark_checkpointed()
        log.info(
            "node_recovered",
            shards=len(restored),
            replayed=replayed,
            vector=replica.store.vector.summary(),
        )

    def _restore_control(self, frames: list[bytes]) -> None:
        msg = self._decode(frames)
        fencing = self._replica.fencing
        if isinstance(msg, Rollback):
            fencing.accept_rollback(Signed(msg, frames))
        elif isinstance(msg, Validated) and fencing.accept_validated(Signed(msg, frames)):
            self._replica.store.validate(msg.vector)

    def checkpoint(self) -> None:
        """Write the shards changed since the last checkpoint and the fencing state, at once
        (on close; ``_checkpoint_in_steps`` does the same off the event loop)."""
        if self.replica is None:
            return
        changed, baseline = self._changed_shards()
        self.disk.checkpoint(self.replica.store, changed)
        self._save_control()
        self._checkpointed = baseline
        self.counters.checkpoints += 1

    async def _checkpoint_in_steps(self) -> None:
        """A checkpoint that keeps the loop responsive: start a new log segment, then write the
        changed shards a few at a time (row snapshots built and written in worker threads,
        checked on the loop in between, paced at ``mesh.checkpoint_build_mib_s``), and drop
        the old segments only once every shard changed before them is on disk. Snapshots taken
        later than the rotation hold more, never less; replaying the newer segment over them is
        idempotent (rows keep the newest version)."""
        changed, baseline = self._changed_shards()
        covered = self.disk.rotate()
        snapshots = CheckpointSnapshots(self._replica.store, changed)
        started, written_bytes = time.monotonic(), 0
        log.info("checkpoint_started", shards=len(changed), log_segments=len(covered))
        while not snapshots.done:
            if self._closed:
                return  # close() checkpoints everything against the old baseline
            # Row snapshots built off the loop: ``CheckpointSnapshots.build_rows``.
            batch = snapshots.take_dense()
            batch += snapshots.confirm(await self._in_background(snapshots.build_rows))
            if batch:
                await self._in_background(self._write_shards, batch)
            written_bytes += sum(parts_nbytes(parts) for _, parts in batch)
            await asyncio.sleep(self._checkpoint_pause_s(batch))
        # Off the loop: under other members' checkpoint writes, an fsync and the unlinks of
        # ~100 MB of log held the loop up to ~0.5 s (mesh_procs_bench, 13 members, one disk).
        await self._in_background(self._finish_checkpoint_files, self._control_frames(), covered)
        self._checkpointed = baseline
        self.counters.checkpoints += 1
        took_s = round(time.monotonic() - started, 3)
        mib = round(written_bytes / MIB, 1)
        log.info(
            "checkpoint_written", shards=len(changed), mib=mib, took_s=took_s, scans=snapshots.scans
        )

    async def _in_background(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the checkpoint's idle thread (``mesh.checkpoint_sched_idle``), or
        at the replication threads' priority while the checkpoint is behind: on a host kept
        busy, an idle thread wrote a third of the checkpoints (6 against 18 in one 72 s
        benchmark run) and the logs grew past their thresholds."""
        idle = self._background_idle
        executor = self._background if idle is None or self._checkpoint_behind() else idle
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def _checkpoint_pause_s(self, batch: Batch) -> float:
        """The pause after a batch of snapshots: its bytes at ``checkpoint_build_mib_s``."""
        rate = self.config.mesh.checkpoint_build_mib_s * MIB
        return sum(parts_nbytes(parts) for _, parts in batch) / rate if rate > 0 else 0.0

    def _checkpoint_wait_s(self) -> float:
        """The checkpoint interval, jittered by +-CHECKPOINT_JITTER: members started together
        would otherwise checkpoint together, a burst of CPU and disk on a shared host."""
        return self.config.mesh.checkpoint_interval_s * self._spread()

    def _spread(self) -> float:
        return 1.0 + CHECKPOINT_JITTER * (2.0 * self._jitter.random() - 1.0)

    def _start_checkpoint(self) -> None:
        self._logged_at_checkpoint = self.disk.bytes_logged
        self._log_ratio_spread = self._spread()
        self._checkpointing = asyncio.create_task(self._checkpoint_in_steps())
        self._checkpointing.add_done_callback(self._checkpoint_done)

    def _checkpoint_due(self) -> bool:
        """No checkpoint running, and the log written since the last one holds at least
        ``mesh.checkpoint_log_ratio`` times the store's bytes and ``checkpoint_log_min_bytes``:
        a store rewritten by every checkpoint then costs O(bytes written), and a restart
        replays at most that much log. The threshold is jittered +-CHECKPOINT_JITTER per
        checkpoint: members applying the same stream reached it at the same moment, twelve
        stores rewritten at once on one host."""
        if self._checkpointing is not None:
            return False
        return self._logged_since_checkpoint() >= max(self._checkpoint_log_bytes(), 1)

    def _checkpoint_behind(self) -> bool:
        """The log written since the running checkpoint began already asks for the next
        one (``checkpoint_log_ratio`` > 0): the checkpoint falls behind the log."""
        if self.config.mesh.checkpoint_log_ratio <= 0:
            return False
        return self._logged_since_checkpoint() >= self._checkpoint_log_bytes()

    def _logged_since_checkpoint(self) -> int:
        return self.disk.bytes_logged - self._logged_at_checkpoint

    def _checkpoint_log_bytes(self) -> float:
        """The log a checkpoint waits for (``_checkpoint_due``), jittered."""
        mesh = self.config.mesh
        floor = mesh.checkpoint_log_min_bytes if mesh.checkpoint_log_ratio > 0 else 0
        needed = max(mesh.checkpoint_log_ratio * self._replica.store.nbytes_estimate(), floor)
        return needed * self._log_ratio_spread

    def _write_shards(self, snapshots: Batch) -> None:
        for shard, parts in snapshots:
            self.disk.write_shard(shard, parts)

    def _changed_shards(self) -> tuple[list[int], tuple[np.ndarray, np.ndarray]]:
        """Shards changed since the last checkpoint, and the (vector, digests) baseline now."""
        store = self._replica.store
        vector, digests = store.vector.packed, store.digests
        assert self._checkpointed is not None
        old_vector, old_digests = self._checkpointed
        changed = np.flatnonzero((vector != old_vector) | (digests != old_digests))
        return [int(s) for s in changed], (vector.copy(), digests.copy())

    def _save_control(self) -> None:
        self.disk.save_control(self._control_frames())

    def _control_frames(self) -> list[list[Any]]:
        control = [s.raw for s in self._replica.fencing.control_messages()]
        return [list(f) for f in control if isinstance(f, list)]

    def _finish_checkpoint_files(self, control: list[list[Any]], covered: list[Path]) -> None:
        """Save the fencing state, then drop the log segments the snapshots now cover (a
        worker thread: frames and paths only, no replica state)."""
        self.disk.save_control(control)
        self.disk.drop(covered)

    def _checkpoint_done(self, task: asyncio.Task[None]) -> None:
        if self._turns is not None:
            self._turns.release()
        self._checkpointing = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("checkpoint_failed", exc_info=exc)
        freeze_heap()

    def _mark_checkpointed(self) -> None:
        store = self._replica.store
        self._checkpointed = (store.vector.packed.copy(), store.digests.copy())

    # -- the owner task -------------------------------------------------------------------------

    @property
    def _replica(self) -> Replica:
        assert self.replica is not None
        return self.replica

    @property
    def _membership(self) -> Membership:
        assert self.membership is not None
        return self.membership

    def status(self) -> dict[str, Any]:
        """What this member holds, for `p2prec status`, tests and the HTTP API."""
        replica = self._replica
        store = replica.store
        return {
            "id": replica.node_id,
            "dc": replica.dc,
            "role": self.config.node.role,
            "addr": replica.addr,
            "pid": os.getpid(),
            "epoch": replica.fencing.epoch,
            "merkle_root": store.root.hex(),
            "vector": store.vector.to_list(),
            "watermark": store.watermark.to_list(),
            "summary": store.vector.summary(),
            "members": len(replica.membership.alive_members()),
            "counters": dataclasses.asdict(replica.counters),
            "transport": self.transport.counters.as_dict(),
            "driver": dataclasses.asdict(self.counters),
            "membership": dataclasses.asdict(self._membership.counters),
            "url": self.http_url,
            "written_s": time.time(),  # when this status was taken (readers judge freshness)
        }

    def status_soon(self) -> None:
        """Rewrite status.json within STATUS_INTERVAL_S, as after a change of state (e.g. the
        trainer paused: a checker then waits for a status taken after the pause)."""
        self._status_shown = b""
        self._wake.set()

    def _write_status_off_loop(self) -> bool:
        """``data_dir/status.json`` (read by tools and tests), replaced atomically by a worker
        thread: creating and renaming a file on the loop waited up to 16 ms for the
        filesystem's journal while a checkpoint fsynced its snapshots (measured on ext4), a
        stall of every query and delta. One write at a time, so that an older status never
        replaces a newer one. False when the previous write is still in progress."""
        if self._status_writing is not None and not self._status_writing.done():
            return False
        self._status_written_at, self._status_shown = self.now(), self._status_state()
        data = orjson.dumps(self.status(), option=orjson.OPT_SERIALIZE_NUMPY)
        self._status_writing = asyncio.create_task(asyncio.to_thread(self._replace_status, data))
        return True

    def _status_state(self) -> bytes:
        """What status.json shows that calls for a prompt rewrite when it changes."""
        replica = self._replica
        store = replica.store
        members = len(replica.membership.alive_members())
        head = f"{replica.fencing.epoch}/{members}/".encode()
        return head + store.vector_view.tobytes() + store.watermark.packed.tobytes()

    def _status_due(self) -> float:
        if self._status_state() == self._status_shown:
            return self._status_written_at + STATUS_REFRESH_S
        return self._status_due_after_change()

    def _status_due_after_change(self) -> float:
        """STATUS_INTERVAL_S after the last change (a reader waiting for convergence sees
        the final state promptly), but at least every STATUS_REFRESH_S while deltas keep
        coming: rewritten 5 times a second under a stream, it took ~5% of a loaded node's
        time holding the GIL (py-spy; the status, its Merkle root, a thread's file write)."""
        written = self._status_written_at
        settled = self._state_changed_at + STATUS_INTERVAL_S
        return max(written + STATUS_INTERVAL_S, min(settled, written + STATUS_REFRESH_S))

    def _replace_status(self, data: bytes) -> None:
        path = self.disk.root / "status.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def _run(self) -> None:
        self._next_checkpoint = self.now() + self._checkpoint_wait_s()
        self._next_status = self.now()
        while not self._closed:
            self.counters.owner_turns += 1
            try:
                deadline = self._step()
            except Exception:  # a bug must not silently end ticks, probes and checkpoints
                self.counters.owner_errors += 1
                log.exception("owner_step_failed")
                deadline = self.now() + OWNER_RETRY_S
            self._wake.clear()
            self._waiting_until = deadline
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns normally when the
            # event fires in the same loop iteration as a cancel, losing the cancellation (busy
            # peers set the event all the time), and then close() waited for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - self.now())):
                    await self._wake.wait()

    def _step(self) -> float:
        """One turn of the owner task: timers, peers, status, checkpoints; returns when the
        next turn is due (sooner if a message wakes it)."""
        with self.state_lock:
            effects = self._replica.tick(self.now())
        self._carry_out(effects)
        self._sync_peers()
        self._next_status = self._status_due()
        if self.now() >= self._next_status:
            written = self._write_status_off_loop()
            self._next_status = self._status_due() if written else self.now() + STATUS_RETRY_S
        if self.now() >= self._next_checkpoint:
            self._next_checkpoint = self.now() + self._checkpoint_wait_s()
            if self._checkpoint_due():
                if self._turns is None or self._turns.try_take():
                    self._start_checkpoint()
                else:  # other members of this host are checkpointing: ask again soon
                    self._next_checkpoint = self.now() + CHECKPOINT_TURN_RETRY_S
        due = self._replica.next_deadline()
        return min(due if due is not None else math.inf, self._next_checkpoint, self._next_status)

    def _on_message(self, envelope: Envelope, frames: list[Any]) -> None:
        msg = self._decode(frames)
        if msg is None or self.replica is None:
            return
        if isinstance(msg, MembershipEnvelope):
            try:
                msg = from_body(msg.kind, msg.body)
            except ValueError as exc:
                self.counters.decode_rejected += 1
                log.warning("membership_rejected", peer=envelope.peer, reason=str(exc))
                return
        if isinstance(msg, SyncDigest | SyncRequest) and msg.sender != envelope.node:
            # The envelope's node id is the sender's CURVE identity (checked by the transport):
            # a peer may not speak for another, e.g. claim its versions to stall its pulls.
            self.counters.decode_rejected += 1
            log.warning("sender_mismatch", claimed=msg.sender, node=envelope.node)
            return
        event = Incoming(envelope.sender, msg, frames, envelope.route)
        with self.state_lock:
            self._carry_out(self.replica.forward(event))  # children first, then apply here
            effects = self.replica.handle(event, self.now())
        self._carry_out(effects)
        if not isinstance(msg, ParamDelta) or self._due_sooner():
            self._wake.set()  # members (peer keys), timers or deadlines may have changed

    def _due_sooner(self) -> bool:
        """True when the replica's next deadline moved before the one the owner task sleeps
        until (a pull to schedule, undo to release), or status.json is due sooner now that
        the vector moved. Waking it for every delta ran a whole owner turn per delta: timers,
        peers and a new timeout, ~5% of a node's CPU."""
        due = self._replica.next_deadline()
        self._state_changed_at = self.now()  # the vector moved
        status_due = self._status_due_after_change()
        return (due is not None and due < self._waiting_until) or status_due < self._waiting_until

    def _decode(self, frames: Sequence[Any]) -> Any:
        try:
            return decode(frames, self.verifier, self.limits)
        except RemoteProtocolError as exc:
            self.counters.decode_rejected += 1
            log.warning("message_rejected", reason=str(exc))
            return None

    # -- effects --------------------------------------------------------------------------------

    def _carry_out(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._send(effect)
            elif isinstance(effect, Persist):
                if isinstance(effect.raw, list):
                    self.disk.append(effect.raw)
                    self.counters.persisted += 1
            elif isinstance(effect, Note):
                if effect.event == "delta_applied":
                    self._record_latency(effect.fields)
                log.debug(effect.event, **effect.fields)

    def _record_latency(self, fields: dict[str, Any]) -> None:
        """Publish -> applied here, in ms, by the wall clock (``created_ms`` is the trainer's):
        exact between processes of one host, as good as clock sync across hosts."""
        created_ms = int(fields.get("created_ms", 0))
        if created_ms > 0:
            latency_ms = time.time() * 1000 - created_ms
            self.applied.append((created_ms, latency_ms))
            self.latency_feed.append(latency_ms)

    def _send(self, effect: Send) -> None:
        if effect.raw is not None and isinstance(effect.raw, list):
            frames = effect.raw
        else:
            msg = effect.msg
            if self._replica.membership.handles(msg):
                kind, body = to_body(msg)
                msg = MembershipEnvelope(kind, body)
            frames = encode(msg, None)
        self.transport.send(effect.addr, frames, effect.route)

    def _sync_peers(self) -> None:
        """Give the transport the CURVE key of every member address it may have to reach, and
        note which addresses are in this datacenter (LAN) or not (WAN) for the byte counters."""
        dcs = {}
        for member in self._replica.membership.alive_members():
            dcs[member.addr] = member.dc
            if (
                member.node_id != self.config.node.id
                and self.transport.peer_key(member.addr) is None
            ):
                self.transport.add_peer(member.addr, member.node_id)
        self._dc_of = dcs

    def _peer_class(self, addr: str) -> PeerClass:
        return "lan" if self._dc_of.get(addr) == self.config.node.dc else "wan"

    # -- publishing (the trainer) ---------------------------------------------------------------

    async def validated_head(self, created_ms: int, attempts: int = DIGEST_ATTEMPTS) -> Validated:
        """``Publisher.validated_head`` a few shards per step, DIGEST_STEP_PAUSE_S apart, each
        built in a worker thread, so that the loop goes on publishing, receiving and answering
        while the store is hashed. When the head moves under it (a rollback): begun again at
        the new head, up to ``attempts`` times, then done at once; with ``attempts=1`` it
        raises ``StaleHead`` instead (a validator that judged the old head must not validate
        the new one)."""
        publisher = self._replica
        if not isinstance(publisher, Publisher):
            raise RuntimeError("only the trainer validates its head")
        for attempt in range(1, attempts + 1):
            job = publisher.begin_validated_head(created_ms)
            try:
                # Each step built in a worker thread (the scan's slices, the gathers and the
                # hashing), confirmed on the loop: ``HeadDigestJob``.
                while (
                    validated := job.confirm(await asyncio.to_thread(job.build, DIGEST_STEP_SHARDS))
                ) is None:
                    await asyncio.sleep(DIGEST_STEP_PAUSE_S)
                return validated
            except StaleHead as exc:
                if attempts == 1:
                    raise
                log.info("validated_head_restarted", attempt=attempt, reason=str(exc))
        return publisher.validated_head(created_ms)

    def publish(self, msg: ParamDelta | Validated | Rollback) -> None:
        """Sign ``msg`` and publish it into the mesh (trainer only)."""
        replica = self._replica
        if not isinstance(replica, Publisher) or self.signer is None:
            raise RuntimeError("only the trainer, with its signing key, publishes")
        frames = list(encode(msg, self.signer))
        with self.state_lock:
            if isinstance(msg, ParamDelta):
                effects = replica.publish(msg, frames)
            elif isinstance(msg, Validated):
                effects = replica.publish_validated(msg, frames)
            else:
                effects = replica.publish_rollback(msg, frames)
        self.disk.append(frames)
        self._carry_out(effects)
        self._wake.set()
        if isinstance(msg, Rollback) and rolled_back_to_watermark(replica.store, msg):
            # Re-announce the (already validated) state in the new epoch: nodes that missed the
            # old epoch's validation need it to verify the snapshots they may fetch. A rollback
            # to an unvalidated state (a restart at the head) waits for the validator instead.
            self.publish(replica.validated_head(msg.created_ms))
