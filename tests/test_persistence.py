"""Node state on disk: snapshots + the log of signed messages, replayed after a crash."""

import shutil
from pathlib import Path

import numpy as np

from p2prec.core.versions import VersionVector
from p2prec.io.checkpoint import CheckpointSnapshots
from p2prec.io.persistence import NodeDisk
from p2prec.model.layout import StoreLayout
from p2prec.model.snapshot import snapshot_shard
from p2prec.model.store import ParamStore
from p2prec.sim.lineage import generate
from p2prec.wire.codec import decode, encode
from p2prec.wire.messages import ParamDelta, Rollback
from p2prec.wire.signing import Signer

LAYOUT = StoreLayout(row_shards=4, dim=3)


def replay_into(disk: NodeDisk, store: ParamStore, signer: Signer) -> int:
    count = 0
    for frames in disk.replay():
        msg = decode(frames, signer.verifier())
        if isinstance(msg, ParamDelta):
            store.apply(msg)
        elif isinstance(msg, Rollback):
            store.rollback(msg.to)
        count += 1
    return count


def test_restart_restores_snapshots_then_replays_the_log(tmp_path: Path) -> None:
    signer = Signer.generate()
    lineage = generate(LAYOUT, seed=1, steps=30)
    live = ParamStore(LAYOUT)
    disk = NodeDisk(tmp_path, fsync=False)
    for i, delta in enumerate(lineage.deltas):
        live.apply(delta)
        disk.append(encode(delta, signer))
        if i == 14:
            disk.checkpoint(live, range(LAYOUT.n_shards))
    disk.flush()  # a crash now: no close, no final checkpoint
    restarted = ParamStore(LAYOUT)
    again = NodeDisk(tmp_path, fsync=False)
    assert sorted(again.load_snapshots(restarted)) == list(range(LAYOUT.n_shards))
    assert replay_into(again, restarted, signer) == 15  # only what came after the checkpoint
    assert restarted.root == live.root
    assert restarted.vector == live.vector


def test_a_checkpoint_in_steps_covers_what_it_drops(tmp_path: Path) -> None:
    """The driver's checkpoint: rotate, then write one shard per batch while deltas keep
    coming and a validation releases undo under the scan (later snapshots hold more), drop
    the old segments only at the end. A crash at any point of it recovers the live state."""
    signer = Signer.generate()
    lineage = generate(LAYOUT, seed=3, steps=40)
    live = ParamStore(LAYOUT)
    disk = NodeDisk(tmp_path, fsync=False)
    crash_states = []
    covered: list[Path] = []
    steps: CheckpointSnapshots | None = None
    for i, delta in enumerate(lineage.deltas):
        live.apply(delta)
        disk.append(encode(delta, signer))
        if i == 10:
            covered = disk.rotate()
            steps = CheckpointSnapshots(live, range(LAYOUT.n_shards), step_bytes=1)
        elif i == 12:
            live.validate(live.vector)  # frees rows the checkpoint's scan points at
        if steps is not None and i > 10 and not steps.done and write_next_batch(steps, disk):
            disk.drop(covered)
        disk.flush()
        if i in (12, 30):  # mid-checkpoint (old segments kept), and after it
            crash_states.append((copy_dir(tmp_path, i), live.root, live.vector))
    assert steps is not None and steps.done and steps.scans == 2
    for path, root, vector in crash_states:
        restarted = ParamStore(LAYOUT)
        again = NodeDisk(path, fsync=False)
        again.load_snapshots(restarted)
        replay_into(again, restarted, signer)
        assert restarted.root == root
        assert restarted.vector == vector
    assert len(list((tmp_path / "log").glob("*.log"))) == 1  # the covered segment is gone


def write_next_batch(steps: CheckpointSnapshots, disk: NodeDisk) -> bool:
    """Write the next batch of a checkpoint's snapshots; True once all are written."""
    for shard, parts in steps.next_batch():
        disk.write_shard(shard, parts)
    return steps.done


def copy_dir(src: Path, tag: int) -> Path:
    dst = src.parent / f"{src.name}-crash-{tag}"
    shutil.copytree(src, dst)
    return dst


def test_a_torn_tail_is_ignored_and_a_rollback_replays(tmp_path: Path) -> None:
    signer = Signer.generate()
    lineage = generate(LAYOUT, seed=2, steps=10)
    live = ParamStore(LAYOUT)
    disk = NodeDisk(tmp_path, fsync=False)
    for delta in lineage.deltas:
        live.apply(delta)
        disk.append(encode(delta, signer))
    to = VersionVector(lineage.states[6].vector)
    rollback = Rollback(to, 2)
    live.rollback(to)
    disk.append(encode(rollback, signer))
    disk.close()
    segment = sorted((tmp_path / "log").glob("*.log"))[-1]
    with segment.open("ab") as handle:
        handle.write(b"\x40\x00\x00\x00\x00\x00\x00\x00partial")  # a record cut short
    restarted = ParamStore(LAYOUT)
    assert replay_into(NodeDisk(tmp_path, fsync=False), restarted, signer) == 11
    assert restarted.root == live.root


def test_control_messages_survive(tmp_path: Path) -> None:
    signer = Signer.generate()
    rollback = Rollback(VersionVector.zeros(LAYOUT.n_shards), 2)
    disk = NodeDisk(tmp_path, fsync=False)
    disk.save_control([encode(rollback, signer)])
    loaded = NodeDisk(tmp_path, fsync=False).load_control()
    msg = decode(loaded[0], signer.verifier())
    assert isinstance(msg, Rollback)
    assert msg.new_epoch == 2


def test_an_appended_message_survives_a_sigkill_of_the_writer(tmp_path: Path) -> None:
    """A node reports what it applied (status.json, HTTP) right after logging it: a SIGKILL
    must not take it back, or the restarted node serves older versions than it did (found by
    the reliability suite: a killed node came back one delta behind what it had reported)."""
    import signal
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from p2prec.io.persistence import NodeDisk\n"
        "disk = NodeDisk(sys.argv[1], fsync=False)\n"
        "disk.append([b'header', b'payload'])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert [list(map(bytes, r)) for r in NodeDisk(tmp_path).replay()] == [[b"header", b"payload"]]


def test_checkpoint_snapshots_come_in_batches_of_bounded_bytes_from_one_scan() -> None:
    lineage = generate(LAYOUT, seed=4, steps=20)
    store = ParamStore(LAYOUT)
    for delta in lineage.deltas:
        store.apply(delta)
    expected = {s: snapshot_shard(store, s) for s in range(LAYOUT.n_shards)}
    step_bytes = max(len(expected[s]) for s in range(LAYOUT.row_shards)) + 1
    steps = CheckpointSnapshots(store, range(LAYOUT.n_shards), step_bytes=step_bytes)
    batches, scan_turns = [], 0
    while not steps.done:
        batch = steps.next_batch()
        scan_turns += not batch  # a turn taken by a step of the index scan
        batches += [batch] if batch else []
    assert 1 <= scan_turns <= 3  # a slice per table (two), then the scan is complete
    got = {shard: b"".join(parts) for batch in batches for shard, parts in batch}
    assert got == expected  # the dense shard too, in the first batch
    for batch in batches:  # a batch ends once it holds step_bytes
        assert sum(len(got[shard]) for shard, _ in batch[:-1]) < step_bytes
    assert 2 <= len(batches) < LAYOUT.n_shards and steps.scans == 1


def test_replay_returns_frames_of_every_size_as_appended(tmp_path: Path) -> None:
    """The replay gives back every frame as appended: sizes from empty to a few hundred KB."""
    import numpy as np

    rng = np.random.default_rng(3)
    kib64 = 64 << 10
    sizes = [0, 7, kib64 - 1, kib64, 3 * kib64 + 5, 1]
    messages = [[rng.bytes(n) for n in sizes], [rng.bytes(n) for n in reversed(sizes)], [b""]]
    disk = NodeDisk(tmp_path, fsync=False)
    for frames in messages:
        disk.append([memoryview(f) for f in frames])
    disk.close()
    assert [list(map(bytes, r)) for r in NodeDisk(tmp_path).replay()] == messages


def scanned(steps: CheckpointSnapshots) -> None:
    """Take the steps of the checkpoint's index scan (``build_rows`` builds nothing until
    the scan is complete), each confirmed as the node does."""
    while steps.confirm(steps.build_rows()) == [] and steps._scan is None:
        pass


def test_rows_built_off_the_loop_are_kept_only_while_their_slots_held_them(
    tmp_path: Path,
) -> None:
    """``build_rows`` runs in a worker thread while the loop applies deltas: a validation that
    freed the rows of built snapshots before ``confirm`` voids them (the shard goes back, a
    new scan reads it as of a later version); a crash after the checkpoint recovers."""
    signer = Signer.generate()
    lineage = generate(LAYOUT, seed=5, steps=30)
    live = ParamStore(LAYOUT)
    disk = NodeDisk(tmp_path, fsync=False)
    for delta in lineage.deltas[:10]:
        live.apply(delta)
        disk.append(encode(delta, signer))
    covered = disk.rotate()
    steps = CheckpointSnapshots(live, range(LAYOUT.n_shards), step_bytes=1)
    for shard, parts in steps.take_dense():
        disk.write_shard(shard, parts)
    scanned(steps)
    built = steps.build_rows()  # "in the thread": one shard (step_bytes=1)
    assert len(built) == 1
    for delta in lineage.deltas[10:15]:  # meanwhile the loop applies and validates
        live.apply(delta)
        disk.append(encode(delta, signer))
    live.validate(live.vector)  # frees rows the scan points at: undo released past it
    assert steps.confirm(built) == [] and steps.scans == 2
    assert built[0][0] in steps.pending  # to be built again, from the new scan
    while not steps.done:
        for shard, parts in steps.next_batch():
            disk.write_shard(shard, parts)
    disk.drop(covered)
    disk.flush()
    restarted = ParamStore(LAYOUT)
    again = NodeDisk(tmp_path, fsync=False)
    again.load_snapshots(restarted)
    replay_into(again, restarted, signer)
    assert restarted.root == live.root and restarted.vector == live.vector


def test_an_index_grown_under_the_last_scan_step_voids_the_scan() -> None:
    """A slice read off the loop while the index grew may miss keys: ``confirm`` scans
    again (and builds nothing from the scan it cannot trust)."""
    lineage = generate(LAYOUT, seed=6, steps=10, key_space=40)
    store = ParamStore(LAYOUT)
    for delta in lineage.deltas[:5]:
        store.apply(delta)
    steps = CheckpointSnapshots(store, range(LAYOUT.row_shards), step_bytes=1)
    while steps.build_rows() == [] and steps._scan is None:  # up to the step completing it
        steps.confirm([])
    index = store.tables[LAYOUT.tables[0]].index
    growths = index.growths
    index.find_or_insert(np.arange(10**6, 10**6 + 4 * index.capacity, dtype=np.int64))
    assert index.growths > growths
    assert steps.confirm([]) == [] and steps.scans == 2 and steps._scan is None


def test_an_index_grown_under_an_earlier_scan_step_voids_the_scan() -> None:
    """The same for a step that leaves the scan incomplete (one table of two read)."""
    lineage = generate(LAYOUT, seed=6, steps=10, key_space=40)
    store = ParamStore(LAYOUT)
    for delta in lineage.deltas[:5]:
        store.apply(delta)
    steps = CheckpointSnapshots(store, range(LAYOUT.row_shards), step_bytes=1)
    assert steps.build_rows() == [] and steps._scan is None  # the first table's slice
    index = store.tables[LAYOUT.tables[0]].index
    index.find_or_insert(np.arange(10**6, 10**6 + 4 * index.capacity, dtype=np.int64))
    assert steps.confirm([]) == [] and steps.scans == 2 and steps._scan is None
