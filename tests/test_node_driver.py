"""Real drivers on real sockets (127.0.0.1, CURVE): a trainer and three nodes in two DCs.

Everything runs in one asyncio loop in this process; conditions are awaited with deadlines.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import structlog.testing

from p2prec.config import Config, load_config
from p2prec.core.effects import Route, Send
from p2prec.core.membership import Gossip, MemberRecord, MemberState
from p2prec.core.publisher import Publisher
from p2prec.core.sync import digest_of
from p2prec.core.versions import VersionVector
from p2prec.io import node as node_module
from p2prec.io.checkpoint import CheckpointSnapshots
from p2prec.io.curve import generate_node_keys
from p2prec.io.node import CHECKPOINT_TURN_RETRY_S, NodeDriver, store_layout
from p2prec.io.priority import sched_idle_available
from p2prec.io.synthetic import SyntheticStream, run_stream, step_deltas
from p2prec.io.transport import Envelope
from p2prec.io.turns import HostTurns
from p2prec.model.scoring import top_k
from p2prec.serve.nodeview import missing_model
from p2prec.sim.lineage import make_delta
from p2prec.wire.codec import encode
from p2prec.wire.messages import ParamDelta, Rollback, Validated
from p2prec.wire.signing import Signer

DEADLINE_S = 20.0


def make_config(
    tmp: Path,
    node_id: str,
    dc: str,
    seeds: list[str],
    role: str = "node",
    extra: dict[str, object] | None = None,
) -> Config:
    return load_config(
        "local",
        {
            **(extra or {}),
            "node.id": node_id,
            "node.dc": dc,
            "node.role": role,
            "node.data_dir": str(tmp / "state" / node_id),
            "mesh.seeds": seeds,
            "mesh.checkpoint_interval_s": 0.5,
            "store.row_shards": 8,
            "store.dim": 4,
            "keys.curve_dir": str(tmp / "curve"),
            "keys.trainer_public_key": str(tmp / "trainer.pub"),
        },
    )


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not condition():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # polling a condition with a deadline, not settling


class Mesh:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.signer = Signer.generate()
        for name in ("trainer", "a1", "a2", "b1"):
            generate_node_keys(tmp / "curve", name)
        (tmp / "rogue-keys").mkdir()
        self.rng = np.random.default_rng(0)
        self.trainer: NodeDriver | None = None
        self.nodes: dict[str, NodeDriver] = {}

    async def start_trainer(self, extra: dict[str, object] | None = None) -> str:
        config = make_config(self.tmp, "trainer", "dc-t", [], role="trainer", extra=extra)
        self.trainer = NodeDriver(config, self.signer.verifier(), self.signer)
        addr = await self.trainer.start()
        self.seed = f"trainer@{addr}"
        return addr

    async def start_node(self, node_id: str, dc: str) -> NodeDriver:
        driver = NodeDriver(make_config(self.tmp, node_id, dc, [self.seed]), self.signer.verifier())
        await driver.start()
        self.nodes[node_id] = driver
        return driver

    async def trainer_and_node(self, route: Route) -> tuple[NodeDriver, Envelope]:
        """The trainer and node a1, members of each other, and the envelope of a message
        from the trainer on ``route`` (to hand to ``a1._on_message``)."""
        trainer_addr = await self.start_trainer()
        node = await self.start_node("a1", "dc-a")
        await until(lambda: self.members_known(2), "membership")
        return node, Envelope(trainer_addr, "trainer", route, "trainer")

    def next_delta(self) -> ParamDelta:
        """A delta that continues the trainer's head (not published)."""
        assert self.trainer is not None and self.trainer.replica is not None
        store = self.trainer.replica.store
        keys = {t: np.unique(self.rng.integers(-50, 50, 6)) for t in store.layout.tables}
        epoch = self.trainer.replica.fencing.epoch
        return make_delta(store.layout, store.vector.packed, keys, True, self.rng, epoch)

    def publish_step(self) -> None:
        assert self.trainer is not None
        self.trainer.publish(self.next_delta())

    def converged(self, names: list[str] | None = None) -> bool:
        assert self.trainer is not None and self.trainer.replica is not None
        head = self.trainer.replica.store
        chosen = [self.nodes[n] for n in (names or list(self.nodes))]
        return all(
            d.replica is not None
            and d.replica.store.root == head.root
            and d.replica.store.vector == head.vector
            for d in chosen
        )

    def members_known(self, count: int) -> bool:
        return all(
            d.replica is not None and len(d.replica.membership.alive_members()) >= count
            for d in [*self.nodes.values(), self.trainer]
            if d is not None
        )

    async def close(self) -> None:
        for driver in [*self.nodes.values(), self.trainer]:
            if driver is not None:
                await driver.close()


def run(tmp: Path, body: Callable[[Mesh], Awaitable[None]]) -> None:
    async def main() -> None:
        mesh = Mesh(tmp)
        try:
            await body(mesh)
        finally:
            await mesh.close()

    asyncio.run(main())


def test_deltas_reach_every_node_and_a_restarted_node_catches_up(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await mesh.start_trainer()
        for node_id, dc in (("a1", "dc-a"), ("a2", "dc-a"), ("b1", "dc-b")):
            await mesh.start_node(node_id, dc)
        await until(lambda: mesh.members_known(4), "membership")
        for _ in range(5):
            mesh.publish_step()
        await until(mesh.converged, "deltas everywhere")
        # a2 stops; the stream goes on; a2 comes back from disk and catches up.
        await mesh.nodes.pop("a2").close()
        for _ in range(5):
            mesh.publish_step()
        await until(lambda: mesh.converged(["a1", "b1"]), "deltas without a2")
        restarted = await mesh.start_node("a2", "dc-a")
        assert restarted.replica is not None
        assert restarted.replica.store.vector.total_seq() > 0  # served from disk at once
        await until(mesh.converged, "a2 caught up")

    run(tmp_path, body)


async def _checkpointing_trainer(mesh: Mesh, ratio: float, min_bytes: int) -> NodeDriver:
    await mesh.start_trainer(
        {"mesh.checkpoint_log_ratio": ratio, "mesh.checkpoint_log_min_bytes": min_bytes}
    )
    assert mesh.trainer is not None and mesh.trainer.replica is not None
    return mesh.trainer


def test_a_checkpoint_waits_for_a_log_of_ratio_times_the_store(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        trainer = await _checkpointing_trainer(mesh, 20.0, 0)
        store = trainer._replica.store
        ratio = 20.0 * trainer._log_ratio_spread  # jittered per checkpoint
        assert 20.0 * 0.5 <= ratio <= 20.0 * 1.5
        assert not trainer._checkpoint_due()  # nothing logged yet
        mesh.publish_step()
        assert trainer.disk.bytes_logged < ratio * store.nbytes_estimate()
        assert not trainer._checkpoint_due()  # a log under the ratio times the store: wait
        for _ in range(2000):  # rows repeat (keys from -50..50): the store stops growing
            if trainer.disk.bytes_logged >= ratio * store.nbytes_estimate():
                break
            mesh.publish_step()
        assert trainer._checkpoint_due()

    run(tmp_path, body)


@pytest.mark.parametrize("mib_s", [0.5, 0.0])
def test_a_checkpoint_is_paced_at_its_build_rate(tmp_path: Path, mib_s: float) -> None:
    """After each batch of snapshots the checkpoint pauses for the batch's bytes at
    ``mesh.checkpoint_build_mib_s`` (0: never): its pauses add up to the snapshot bytes it
    wrote over the rate. Members of one host checkpointing at full speed held both cores."""

    async def body(mesh: Mesh) -> None:
        await mesh.start_trainer({"mesh.checkpoint_build_mib_s": mib_s})
        trainer = mesh.trainer
        assert trainer is not None
        for _ in range(5):
            mesh.publish_step()
        pauses: list[float] = []
        pause_s = trainer._checkpoint_pause_s

        def recorded(batch: Any) -> float:
            pauses.append(pause_s(batch))
            return pauses[-1]

        trainer._checkpoint_pause_s = recorded  # type: ignore[method-assign]
        with structlog.testing.capture_logs() as events:
            await trainer._checkpoint_in_steps()
        snapshots = list(trainer.disk.shard_dir.glob("*.snap"))
        written = sum(f.stat().st_size for f in snapshots)
        assert written > 0 and len(pauses) > 1
        expected = written / (mib_s * 2**20) if mib_s else 0.0
        assert sum(pauses) == pytest.approx(expected)
        started, done = (e for e in events if e["event"].startswith("checkpoint_"))
        assert started["event"] == "checkpoint_started" and started["shards"] == len(snapshots)
        assert done["event"] == "checkpoint_written" and done["shards"] == len(snapshots)
        assert done["mib"] == round(written / 2**20, 1) and done["took_s"] >= sum(pauses) - 0.01

    run(tmp_path, body)


@pytest.mark.skipif(not sched_idle_available(), reason="SCHED_IDLE is Linux's")
@pytest.mark.parametrize(("idle", "behind"), [(True, False), (True, True), (False, False)])
def test_a_checkpoint_builds_and_writes_on_an_idle_thread_unless_it_falls_behind(
    tmp_path: Path, idle: bool, behind: bool
) -> None:
    """``mesh.checkpoint_sched_idle``: every snapshot build and shard write of a checkpoint
    runs on one thread under SCHED_IDLE, below the replication loop (off: its policy), but
    at the loop's policy while the log written since the checkpoint began already asks for
    the next one (here: any byte, with ``checkpoint_log_ratio`` tiny and no floor)."""
    settings: dict[str, object] = {"mesh.checkpoint_sched_idle": idle}
    if behind:
        settings |= {"mesh.checkpoint_log_ratio": 1e-12, "mesh.checkpoint_log_min_bytes": 0}

    async def body(mesh: Mesh) -> None:
        await mesh.start_trainer(settings)
        trainer = mesh.trainer
        assert trainer is not None
        for _ in range(5):
            mesh.publish_step()
        assert trainer._checkpoint_behind() == behind  # logged since the (last) checkpoint
        seen: set[tuple[int, int]] = set()  # (thread id, policy) of each build and write
        write, build = trainer.disk.write_shard, CheckpointSnapshots.build_rows

        def recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any) -> Any:
                seen.add((threading.get_native_id(), os.sched_getscheduler(0)))
                return fn(*args)

            return call

        trainer.disk.write_shard = recorded(write)  # type: ignore[method-assign]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(CheckpointSnapshots, "build_rows", recorded(build))
            await trainer._checkpoint_in_steps()
        assert list(trainer.disk.shard_dir.glob("*.snap"))
        loop_policy = os.sched_getscheduler(0)
        assert len(seen) == 1 and threading.get_native_id() not in {t for t, _ in seen}
        assert {p for _, p in seen} == {os.SCHED_IDLE if idle and not behind else loop_policy}

    run(tmp_path, body)


@pytest.mark.parametrize("release", [True, False])
def test_the_disk_releases_written_pages_as_configured(tmp_path: Path, release: bool) -> None:
    """``node.release_written_pages`` reaches the disk (its effect: ``test_pagecache``)."""
    config = make_config(tmp_path, "a1", "dc-a", [], extra={"node.release_written_pages": release})
    assert NodeDriver(config, Signer.generate().verifier()).disk.release_pages is release


def checkpointing(driver: NodeDriver) -> asyncio.Task[None] | None:
    return driver._checkpointing


def test_a_due_checkpoint_waits_for_a_turn_among_the_members_of_its_host(tmp_path: Path) -> None:
    """With ``mesh.checkpoint_turns_dir``, a due checkpoint starts only with a turn (an flock
    there, at most ``checkpoint_turns`` at a time), asks again soon without one, and gives
    the turn back when it ends."""
    turns_dir = tmp_path / "turns"

    async def body(mesh: Mesh) -> None:
        await mesh.start_trainer(
            {
                "mesh.checkpoint_turns_dir": str(turns_dir),
                "mesh.checkpoint_turns": 1,
                "mesh.checkpoint_log_ratio": 0.0,  # due at every interval once it logged
            }
        )
        trainer = mesh.trainer
        assert trainer is not None
        mesh.publish_step()
        other_member = HostTurns(turns_dir, 1)
        assert other_member.try_take()
        trainer._next_checkpoint = 0.0
        trainer._step()
        assert checkpointing(trainer) is None, "checkpointed without a turn"
        assert trainer._next_checkpoint == pytest.approx(
            trainer.now() + CHECKPOINT_TURN_RETRY_S, abs=0.05
        )
        other_member.release()
        trainer._next_checkpoint = 0.0
        trainer._step()
        running = checkpointing(trainer)
        assert running is not None and trainer._turns is not None and trainer._turns.held
        assert not other_member.try_take()
        await running
        await until(other_member.try_take, "the turn given back")
        assert trainer.counters.checkpoints == 1

    run(tmp_path, body)


def test_a_checkpoint_waits_for_the_minimum_log_of_a_small_store(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        trainer = await _checkpointing_trainer(mesh, 0.01, 200_000)
        store = trainer._replica.store
        trainer._log_ratio_spread = 1.2  # this checkpoint's jitter, drawn in [0.5, 1.5]
        floor = 200_000 * 1.2  # the minimum is jittered like the ratio
        mesh.publish_step()
        assert trainer.disk.bytes_logged >= 0.02 * store.nbytes_estimate()  # over the ratio
        for _ in range(2000):
            if trainer.disk.bytes_logged >= floor:
                break
            assert not trainer._checkpoint_due()  # under the minimum: wait
            mesh.publish_step()
        assert trainer._checkpoint_due()

    run(tmp_path, body)


def test_an_owner_step_that_raises_is_logged_and_the_node_goes_on(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await mesh.start_trainer()
        node = await mesh.start_node("a1", "dc-a")
        assert node.replica is not None
        tick = node.replica.tick
        failures = [RuntimeError("injected")]

        def failing_once(now: float) -> list[Any]:
            if failures:
                raise failures.pop()
            return tick(now)

        node.replica.tick = failing_once  # type: ignore[method-assign]
        node._wake.set()
        await until(lambda: node.counters.owner_errors == 1, "the injected failure")
        mesh.publish_step()
        await until(mesh.converged, "the node still applies")

        def status_shows_it() -> bool:  # status.json is written by the owner task's steps
            status = orjson.loads((node.disk.root / "status.json").read_bytes())
            return bool(status["driver"]["owner_errors"] == 1 and any(status["vector"]))

        await until(status_shows_it, "the owner task still writing status.json")

    run(tmp_path, body)


def test_a_digest_naming_another_node_than_its_sender_is_dropped(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        node, envelope = await mesh.trainer_and_node(Route.MESH)
        assert mesh.trainer is not None and mesh.trainer.replica is not None
        store = mesh.trainer.replica.store
        before = node.counters.decode_rejected
        for claimed in ("b1", "trainer"):  # only the first names another node than the key's
            node._on_message(envelope, list(encode(digest_of(claimed, store, 1), None)))
            assert node.counters.decode_rejected == before + 1
        assert node.replica is not None
        assert "trainer" in {v.digest.sender for v in node.replica.peer_views()}
        assert "b1" not in {v.digest.sender for v in node.replica.peer_views()}

    run(tmp_path, body)


def test_a_delta_wakes_the_owner_task_only_when_it_moves_a_deadline(tmp_path: Path) -> None:
    """Applying a delta moves no timer: the owner task (timers, peers, status) sleeps on."""

    async def body(mesh: Mesh) -> None:
        node, envelope = await mesh.trainer_and_node(Route.TREE)
        assert mesh.trainer is not None
        turns = node.counters.owner_turns
        deltas = 20
        for _ in range(deltas):
            delta = mesh.next_delta()
            mesh.trainer.publish(delta)  # the trainer's own copy goes to the node as well
            node._on_message(envelope, list(encode(delta, mesh.signer)))
            await asyncio.sleep(0)  # a turn of the loop: a woken owner task would run now
        await until(mesh.converged, "the deltas applied")
        assert node.counters.owner_turns - turns < deltas // 2  # timers only, not one per delta

    run(tmp_path, body)


async def _node_after_a_delta(mesh: Mesh) -> tuple[NodeDriver, bytes]:
    """A node that applied one delta, and the status state it had before."""
    await mesh.start_trainer()
    node = await mesh.start_node("a1", "dc-a")
    await until(lambda: mesh.members_known(2), "membership")
    before = node._status_state()
    mesh.publish_step()
    await until(mesh.converged, "the delta applied")
    return node, before


def test_status_json_is_rewritten_promptly_after_a_change_and_seldom_when_idle(
    tmp_path: Path,
) -> None:
    async def body(mesh: Mesh) -> None:
        node, before = await _node_after_a_delta(mesh)
        # As if status.json was written just before the delta, then just after it:
        node._status_written_at, node._status_shown = node.now(), before
        assert node._status_due() == node._status_written_at + node_module.STATUS_INTERVAL_S
        node._status_shown = node._status_state()
        assert node._status_due() == node._status_written_at + node_module.STATUS_REFRESH_S

    run(tmp_path, body)


def test_status_json_waits_for_a_stream_to_settle_but_not_beyond_the_refresh(
    tmp_path: Path,
) -> None:
    async def body(mesh: Mesh) -> None:
        node, _before = await _node_after_a_delta(mesh)
        now = node.now()
        node._status_written_at, node._status_shown = now - 0.5, b"an older state"
        node._state_changed_at = now - 0.45  # one change, then quiet: due 0.2 s after it
        assert node._status_due() == pytest.approx(now - 0.25)
        node._state_changed_at = now + 0.45  # changes keep coming: due at the refresh
        assert node._status_due() == pytest.approx(now + 0.5)
        node._status_written_at = now  # just written: never sooner than the interval
        node._state_changed_at = now - 1.0
        assert node._status_due() == pytest.approx(now + node_module.STATUS_INTERVAL_S)

    run(tmp_path, body)


def test_a_started_node_moves_its_heap_out_of_the_cyclic_collector(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        gc.unfreeze()
        await mesh.start_trainer()
        assert gc.get_freeze_count() > 0  # full collections no longer scan the store

    try:
        run(tmp_path, body)
    finally:
        gc.unfreeze()


def test_a_synthetic_stream_gives_a_node_a_model_it_can_serve(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await mesh.start_trainer()
        assert mesh.trainer is not None
        publisher = mesh.trainer.replica
        assert isinstance(publisher, Publisher)
        for delta in step_deltas(publisher, SyntheticStream(rows=20), np.random.default_rng(0), 1):
            mesh.trainer.publish(delta)
        store = publisher.store
        assert missing_model(publisher) == ""  # rows and every dense tensor of the tower
        ranking = top_k(store, user=int(store.keys("user")[0]), k=3)
        assert ranking.user_found and ranking.items.size == 3
        assert np.isfinite(ranking.logits).all()

    run(tmp_path, body)


def test_a_synthetic_stream_waits_for_the_members_it_was_told_to(tmp_path: Path) -> None:
    """``wait_members``: nothing is published while fewer members are alive in the trainer's
    view (deltas sent then reach late joiners only by catch-up); once they are, the stream
    runs. A stream that waits past ``wait_members_max_s`` publishes anyway."""

    async def body(mesh: Mesh) -> None:
        await mesh.start_trainer()
        assert mesh.trainer is not None and mesh.trainer.replica is not None
        head = mesh.trainer.replica.store
        spec = SyntheticStream(rate_per_s=100, rows=20, steps=3, validate_every=0)
        waiting = asyncio.create_task(run_stream(mesh.trainer, replace(spec, wait_members=2)))
        await mesh.start_node("a1", "dc-a")
        await until(lambda: mesh.members_known(2), "the trainer and a1 know each other")
        assert not waiting.done() and int(head.vector.packed.max()) == 0
        await mesh.start_node("b1", "dc-b")
        assert await asyncio.wait_for(waiting, DEADLINE_S) == 3
        gave_up = replace(spec, wait_members=5, wait_members_max_s=0.1)
        assert await asyncio.wait_for(run_stream(mesh.trainer, gave_up), DEADLINE_S) == 3

    run(tmp_path, body)


def test_validation_and_rollback_travel_the_mesh(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await mesh.start_trainer()
        for node_id, dc in (("a1", "dc-a"), ("b1", "dc-b")):
            await mesh.start_node(node_id, dc)
        await until(lambda: mesh.members_known(3), "membership")
        assert mesh.trainer is not None and mesh.trainer.replica is not None
        head = mesh.trainer.replica.store
        for _ in range(3):
            mesh.publish_step()
        watermark = head.vector
        mesh.trainer.publish(Validated(watermark, 1, 0, b""))
        root_then = head.root
        for _ in range(3):  # a poisoned burst
            mesh.publish_step()
        await until(mesh.converged, "the burst everywhere")
        mesh.trainer.publish(Rollback(watermark, 2, 0))
        await until(mesh.converged, "rollback everywhere")
        assert head.root == root_then
        assert all(
            d.replica is not None and d.replica.fencing.epoch == 2 for d in mesh.nodes.values()
        )
        mesh.publish_step()
        await until(mesh.converged, "the new epoch")

    run(tmp_path, body)


def test_a_member_gossiped_without_an_allow_listed_key_is_refused(tmp_path: Path) -> None:
    """An allow-listed insider gossips a made-up member (a "ghost" nobody can reach, which in a
    tree would swallow deltas) and a real, allow-listed one: only the second joins."""

    async def body(mesh: Mesh) -> None:
        trainer_addr = await mesh.start_trainer()
        insider = await mesh.start_node("a1", "dc-a")
        await until(lambda: mesh.members_known(2), "membership")
        assert mesh.trainer is not None and mesh.trainer.membership is not None
        membership = mesh.trainer.membership
        ghost = MemberRecord("ghost-1", "127.0.0.1:9", "dc-a", 0, MemberState.ALIVE, "ghost-1")
        a2 = MemberRecord("a2", "127.0.0.1:9", "dc-a", 0, MemberState.ALIVE, "a2")
        insider._send(Send(trainer_addr, Gossip("a1", [ghost, a2])))
        await until(lambda: membership.member("a2") is not None, "the allow-listed member")
        assert membership.member("ghost-1") is None and membership.counters.refused == 1
        assert mesh.trainer.status()["membership"]["refused"] == 1  # status.json, /v1/status

    run(tmp_path, body)


def test_a_peer_with_an_unknown_curve_key_cannot_join(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await mesh.start_trainer()
        await mesh.start_node("a1", "dc-a")
        await until(lambda: mesh.members_known(2), "membership")
        # The rogue has its own keys and knows the trainer's public key, so it can try to
        # connect; but no node allow-lists the rogue's key.
        generate_node_keys(mesh.tmp / "rogue-keys", "rogue")
        shutil.copy(mesh.tmp / "curve" / "trainer.key", mesh.tmp / "rogue-keys" / "trainer.key")
        config = make_config(mesh.tmp, "rogue", "dc-a", [mesh.seed])
        rogue_config = load_config(
            "local", {**_flat(config), "keys.curve_dir": str(mesh.tmp / "rogue-keys")}
        )
        rogue = NodeDriver(rogue_config, mesh.signer.verifier())
        await rogue.start()
        try:
            mesh.publish_step()
            await until(mesh.converged, "a1 still served")
            assert mesh.trainer is not None and mesh.trainer.replica is not None
            names = {m.node_id for m in mesh.trainer.replica.membership.alive_members()}
            assert "rogue" not in names
            assert rogue.replica is not None
            assert rogue.replica.store.vector == VersionVector.zeros(store_layout(config).n_shards)
            denied = mesh.trainer.transport.counters.auth_denied
            assert denied > 0  # the rogue did knock, and CURVE turned it away
        finally:
            await rogue.close()

    run(tmp_path, body)


def _flat(config: Config) -> dict[str, object]:
    return {
        f"{section}.{key}": value
        for section, values in config.to_dict().items()
        if isinstance(values, dict)
        for key, value in values.items()
    }


CLOSE_BOUND_S = 1.5  # a close under traffic takes tens of ms; its worst case is bounded higher


async def _flood(mesh: Mesh, stop: asyncio.Event) -> None:
    """1000-row deltas at ~50/s until ``stop``."""
    assert mesh.trainer is not None and mesh.trainer.replica is not None
    store = mesh.trainer.replica.store
    while not stop.is_set():
        keys = {t: np.unique(mesh.rng.integers(-50_000, 50_000, 1000)) for t in store.layout.tables}
        epoch = mesh.trainer.replica.fencing.epoch
        mesh.trainer.publish(
            make_delta(store.layout, store.vector.packed, keys, True, mesh.rng, epoch)
        )
        await asyncio.sleep(0.02)


async def _flooded_mesh(mesh: Mesh) -> tuple[asyncio.Event, asyncio.Task[None]]:
    await mesh.start_trainer()
    for node_id, dc in (("a1", "dc-a"), ("a2", "dc-a"), ("b1", "dc-b")):
        await mesh.start_node(node_id, dc)
    await until(lambda: mesh.members_known(4), "membership")
    stop = asyncio.Event()
    flood = asyncio.create_task(_flood(mesh, stop))
    await until(lambda: mesh.nodes["a2"].counters.persisted >= 30, "traffic reaching a2")
    return stop, flood


def test_close_while_traffic_flows_is_prompt(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        stop, flood = await _flooded_mesh(mesh)
        victim = mesh.nodes.pop("a2")
        # The owner task's wake-up event fires in the same loop iteration as close()'s cancel,
        # as it does all the time under traffic: this cancel used to be lost (Python 3.11's
        # wait_for), and close() then waited forever for the owner task.
        victim._wake.set()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(victim.close(), CLOSE_BOUND_S)
        assert loop.time() - started < CLOSE_BOUND_S
        assert victim._task is None
        await victim.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            victim.transport.send("127.0.0.1:1", [b"x", b"y"])
        stop.set()
        await flood
        await until(lambda: mesh.converged(["a1", "b1"]), "the others still served")

    run(tmp_path, body)


def test_cancelling_close_propagates_and_still_closes(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        stop, flood = await _flooded_mesh(mesh)
        victim = mesh.nodes.pop("a2")
        victim._wake.set()
        closing = asyncio.create_task(victim.close())
        await asyncio.sleep(0)  # close() has cancelled the owner task and waits for it
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(closing, CLOSE_BOUND_S)  # not swallowed, not a timeout
        assert closing.cancelled()
        with pytest.raises(RuntimeError, match="closed"):  # the transport closed anyway
            victim.transport.send("127.0.0.1:1", [b"x", b"y"])
        stop.set()
        await flood

    run(tmp_path, body)


def test_status_json_is_written_by_a_worker_thread_and_stays_current(tmp_path: Path) -> None:
    """A file created and renamed on the event loop waited for the filesystem journal while a
    checkpoint fsynced (up to 16 ms, every query and delta stalled): status.json is written
    off the loop, and still tracks the node."""

    async def body(mesh: Mesh) -> None:
        await mesh.start_trainer()
        trainer = mesh.trainer
        assert trainer is not None and trainer.replica is not None
        writers: list[int] = []
        replace = trainer._replace_status

        def recording(data: bytes) -> None:
            writers.append(threading.get_ident())
            replace(data)

        trainer._replace_status = recording  # type: ignore[method-assign]
        mesh.publish_step()
        path = trainer.disk.root / "status.json"
        head = trainer.replica.store.root.hex()

        def current() -> bool:
            return path.exists() and orjson.loads(path.read_bytes())["merkle_root"] == head

        await until(current, "status.json with the published head")
        assert writers and threading.get_ident() not in writers

    run(tmp_path, body)
