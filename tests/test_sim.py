"""Deterministic simulation of the real core (Mesh issue acceptance).

200 seeds of a 9-node, 3-datacenter mesh with random faults (crashes and restarts, some at a
new address; a datacenter partitioned, sometimes longer than the dead-node timeout; loss,
duplication, reordering; validations and poisoned bursts rolled back): every run converges
within the stated virtual-time bound with no invariant violated. Also a 100-node run, and
replay of a seed.
"""

from dataclasses import replace

import numpy as np
import pytest

from p2prec.model.layout import StoreLayout
from p2prec.model.store import ParamStore
from p2prec.sim.cluster import Cluster
from p2prec.sim.lineage import make_delta
from p2prec.sim.network import LinkModel
from p2prec.sim.runner import config_for, format_result
from p2prec.sim.scenario import SimConfig, converged, run

#: Virtual seconds after the last fault within which every run must have converged.
CONVERGENCE_BOUND_S = 30.0
SEEDS = 200


def small() -> SimConfig:
    config = config_for(9, stream_s=3.0)
    return replace(
        config, settle_bound_s=CONVERGENCE_BOUND_S, stream=replace(config.stream, interval_s=0.1)
    )


def test_every_seed_converges_without_violations() -> None:
    config = small()
    failures, rollbacks, restarts = [], 0, 0
    for seed in range(SEEDS):
        result = run(seed, config)
        rollbacks += result.rollbacks
        restarts += result.restarts
        if not result.ok:
            failures.append(format_result(result))
    assert not failures, "\n".join(failures)
    assert rollbacks > SEEDS // 4  # the faults did happen
    assert restarts >= SEEDS


@pytest.mark.slow
def test_a_hundred_nodes_converge() -> None:
    result = run(7, config_for(100, stream_s=3.0))
    assert result.ok, format_result(result)
    assert result.converge_s < CONVERGENCE_BOUND_S


def test_a_seed_replays_identically() -> None:
    config = small()
    a, b = run(11, config), run(11, config)
    assert (a.converge_s, a.steps, a.rollbacks, a.wan_deltas, a.lan_deltas) == (
        b.converge_s,
        b.steps,
        b.rollbacks,
        b.wan_deltas,
        b.lan_deltas,
    )


def test_the_checkers_catch_a_broken_mesh() -> None:
    """With anti-entropy off and heavy loss, nodes miss deltas for good: the run must fail."""
    config = small()
    broken = replace(
        config,
        settle_bound_s=3.0,
        replica=replace(config.replica, anti_entropy_interval_s=1e9),
        faults=replace(config.faults, loss=0.2),
    )
    result = run(3, broken)
    assert not result.ok
    assert any(v.invariant == "convergence" for v in result.violations)


def test_the_checkers_catch_a_node_that_ignores_rollbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from p2prec.core.replica import Replica
    from p2prec.wire.messages import Rollback

    def keep_fenced_rows(self: Replica, msg: Rollback) -> list[int]:
        return []

    monkeypatch.setattr(Replica, "_roll_back", keep_fenced_rows)
    result = run(0, small())
    assert result.rollbacks > 0
    assert any(v.invariant == "rollback" for v in result.violations)


def test_sim_command_prints_each_seed_and_fails_on_violations(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from p2prec.cli import main

    assert main(["sim", "--nodes", "6", "--seeds", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in out[:2]] == [["seed", "0", "ok"], ["seed", "1", "ok"]]
    assert out[-1] == "2 passed, 0 failed"
    from p2prec.core.replica import Replica

    monkeypatch.setattr(Replica, "_gossip_digest", lambda self: [])  # no anti-entropy
    monkeypatch.setattr(Replica, "_roll_back", lambda self, msg: [])
    assert main(["sim", "--nodes", "6", "--seeds", "2"]) == 1


def test_without_faults_one_copy_of_each_delta_crosses_into_each_datacenter() -> None:
    config = small()
    cluster = Cluster.build(
        5,
        config.nodes,
        config.dcs,
        config.layout,
        LinkModel(),
        config.replica,
        config.membership,
        config.stream,
    )
    cluster.run_until(5.0)  # membership forms: seed-driven join, probes
    for i in range(20):
        cluster.at(5.0 + 0.1 * i, cluster.publish_step)
    assert cluster.run_until(20.0, lambda: cluster.steps == 20 and converged(cluster))
    published = cluster.publisher.counters.applied  # deltas: one per shard group per step
    assert published > 20
    assert cluster.network.traffic.wan_tree_deltas == published * config.dcs


def test_a_lineage_delta_carries_rows_of_the_store_dtype() -> None:
    """As the trainer extracts them: a float16 store's deltas carry half the bytes."""
    layout = StoreLayout(row_shards=4, dim=8, dtype="float16")
    store = ParamStore(layout)
    keys = {"user": np.arange(5, dtype=np.int64), "item": np.arange(3, dtype=np.int64)}
    delta = make_delta(layout, store.vector.packed, keys, False, np.random.default_rng(0), 1)
    assert {rows.rows.dtype for rows in delta.tables.values()} == {np.dtype(np.float16)}
    store.apply(delta)
    store.validate_state()
