"""The HTTP API of a node, in process: a trainer's publisher and nodes on real sockets (CURVE),
each node served by aiohttp on a free port and queried over HTTP."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_http_support import ITEMS, TOKEN, Client, HttpMesh
from test_node_driver import until

from p2prec.io.transport import DRAIN_BUDGET_S, SERVING_DRAIN_BUDGET_S
from p2prec.log import reset_logging
from p2prec.model import scoring
from p2prec.serve import queries
from p2prec.serve.server import ThreadedServer

DEADLINE_S = 20.0


async def until_http(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not await check():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # polling a condition with a deadline, not settling


def run_mesh(tmp: Path, body: Callable[[HttpMesh, aiohttp.ClientSession], Awaitable[None]]) -> None:
    reset_logging()  # an earlier test may have configured logs into a closed stream

    async def main() -> None:
        mesh = HttpMesh(tmp)
        try:
            async with aiohttp.ClientSession() as session:
                await body(mesh, session)
        finally:
            await mesh.close()

    asyncio.run(main())


async def node_with_model(mesh: HttpMesh, session: aiohttp.ClientSession, steps: int = 3) -> Client:
    await mesh.start_trainer()
    node = await mesh.start_node("a1", "dc-a")
    client = Client(await mesh.serve(node), session)
    await until(lambda: mesh.members_known(2), "membership")
    for _ in range(steps):
        mesh.publish_model_step(created_ms=int(time.time() * 1000))
    await until(mesh.converged, "the model on a1")
    await until_http(lambda: is_ready(client), "a1 ready")
    return client


async def is_ready(client: Client) -> bool:
    status, _ = await client.get("/readyz")
    return status == 200


def test_readiness_follows_the_model(tmp_path: Path) -> None:
    async def body(mesh: HttpMesh, session: aiohttp.ClientSession) -> None:
        await mesh.start_trainer()
        node = await mesh.start_node("a1", "dc-a")
        client = Client(await mesh.serve(node), session)
        assert await client.get("/healthz") == (200, {"ok": True})
        status, answer = await client.get("/readyz")
        assert status == 503 and answer["ready"] is False and "no model" in answer["reason"]
        status, answer = await client.get("/v1/recommend", user=1)
        assert status == 503 and "no model" in answer["error"]
        await until(lambda: mesh.members_known(2), "membership")
        mesh.publish_model_step()
        await until_http(lambda: is_ready(client), "/readyz 200")
        assert node.status()["url"] == client.url  # what status.json carries

    run_mesh(tmp_path, body)


def test_recommend_and_score_answer_from_the_store_with_its_state(tmp_path: Path) -> None:
    async def body(mesh: HttpMesh, session: aiohttp.ClientSession) -> None:
        client = await node_with_model(mesh, session)
        store = mesh.nodes["a1"].replica.store  # type: ignore[union-attr]
        status, answer = await client.get("/v1/recommend", user=3, k=5)
        assert status == 200 and answer["cold_start"] is False
        expected = scoring.top_k(store, 3, 5)
        assert [i["item"] for i in answer["items"]] == expected.items.tolist()
        scores = [i["score"] for i in answer["items"]]
        assert scores == sorted(scores, reverse=True)
        model = answer["model"]
        assert model["epoch"] == 1 and model["consistency"] == "latest"
        assert model["vector_summary"] == store.vector.summary()

        status, answer = await client.get("/v1/recommend", user=987654, k=4)
        assert status == 200 and answer["cold_start"] is True and len(answer["items"]) == 4
        assert {i["item"] for i in answer["items"]} <= set(ITEMS.tolist())

        items = [100, 101, 424242]
        status, answer = await client.send("POST", "/v1/score", {"user": 3, "items": items})
        assert status == 200 and answer["cold_start"] is False
        assert [s["item"] for s in answer["scores"]] == items
        assert [s["known"] for s in answer["scores"]] == [True, True, False]
        want = scoring.score_items(store, 3, items).logits
        np.testing.assert_allclose([s["score"] for s in answer["scores"]], want, rtol=1e-6)

    run_mesh(tmp_path, body)


def test_status_and_metrics(tmp_path: Path) -> None:
    async def body(mesh: HttpMesh, session: aiohttp.ClientSession) -> None:
        client = await node_with_model(mesh, session)
        node = mesh.nodes["a1"]
        assert node.replica is not None
        status, answer = await client.get("/v1/status")
        assert status == 200
        assert (answer["id"], answer["dc"], answer["role"]) == ("a1", "dc-a", "node")
        assert answer["url"] == client.url and answer["pid"] == os.getpid()
        assert answer["ready"] is True and answer["epoch"] == 1
        assert answer["merkle_root"] == node.replica.store.root.hex()
        assert answer["vector_summary"] == node.replica.store.vector.summary()
        assert answer["watermark"] == node.replica.store.watermark.to_list()
        assert answer["lag_versions"] == 0 and answer["lag_ms"] == 0
        assert {"id": "trainer", "state": "alive"}.items() <= answer["peers"][0].items()
        assert len(answer["tree"]) == node.config.mesh.shard_groups
        assert all(place["parent"] == "trainer" for place in answer["tree"])  # a1: every root
        assert answer["counters"]["applied"] > 0
        assert {"repaired", "rejected"} <= set(answer["counters"])

        await client.get("/v1/recommend", user=1)
        families = metric_families(await client.text("/metrics"))
        applied = families["p2prec_deltas_applied"]["p2prec_deltas_applied_total"]
        assert applied == node.replica.counters.applied
        assert families["p2prec_update_latency_seconds"]["p2prec_update_latency_seconds_count"] > 0
        assert families["p2prec_http_request_duration_seconds"]
        assert families["p2prec_lag_seconds"]["p2prec_lag_seconds"] == 0
        assert families["p2prec_transport_bytes"]["p2prec_transport_bytes_total"] > 0
        assert "p2prec_queue_drops" in families and "p2prec_deltas_rejected" in families

    run_mesh(tmp_path, body)


def metric_families(text: str) -> dict[str, dict[str, float]]:
    """Family name -> sample name -> summed value (parsed as Prometheus exposition)."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return out


def test_validated_reads_never_see_rows_newer_than_the_watermark(tmp_path: Path) -> None:
    async def body(mesh: HttpMesh, session: aiohttp.ClientSession) -> None:
        client = await node_with_model(mesh, session, steps=2)
        head = mesh.head.replica.store  # type: ignore[union-attr]
        mesh.validate_head()
        at_watermark = scoring.top_k(head, 5, 8)
        items = ITEMS[:6].tolist()
        scores_at_watermark = scoring.score_items(head, 5, items).logits
        for _ in range(2):
            mesh.publish_model_step()
        await until(mesh.converged, "the steps after the watermark on a1")
        store = mesh.nodes["a1"].replica.store  # type: ignore[union-attr]
        assert store.watermark != store.vector

        _, validated = await client.get("/v1/recommend", user=5, k=8, consistency="validated")
        _, latest = await client.get("/v1/recommend", user=5, k=8, consistency="latest")
        assert [i["item"] for i in validated["items"]] == at_watermark.items.tolist()
        np.testing.assert_allclose(
            [i["score"] for i in validated["items"]], at_watermark.logits, rtol=1e-6
        )
        assert validated["model"]["vector_summary"] == store.watermark.summary()
        assert latest["model"]["vector_summary"] == store.vector.summary()
        assert [i["score"] for i in latest["items"]] != [i["score"] for i in validated["items"]]

        request = {"user": 5, "items": items, "consistency": "validated"}
        _, scored = await client.send("POST", "/v1/score", request)
        np.testing.assert_allclose([s["score"] for s in scored["scores"]], scores_at_watermark)
        assert scored["model"]["consistency"] == "validated"

    run_mesh(tmp_path, body)


BAD_GETS: list[tuple[dict[str, Any], str]] = [
    ({}, "user"),
    ({"user": "abc"}, "user"),
    ({"user": "1.5"}, "user"),
    ({"user": str(1 << 64)}, "user"),
    ({"user": 1, "k": -1}, "k"),
    ({"user": 1, "k": 0}, "k"),
    ({"user": 1, "k": 10**12}, "k"),
    ({"user": 1, "k": "ten"}, "k"),
    ({"user": 1, "consistency": "eventual"}, "consistency"),
]
BAD_POSTS: list[tuple[bytes, str]] = [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (b'{"items": [1]}', "user"),
    (b'{"user": "x", "items": [1]}', "user"),
    (b'{"user": 1}', "items"),
    (b'{"user": 1, "items": 7}', "items"),
    (b'{"user": 1, "items": [1, "two"]}', "items"),
    (b'{"user": 1, "items": [1.5]}', "items"),
    (b'{"user": true, "items": [1]}', "user"),
    (b'{"user": 1, "items": [1], "consistency": 3}', "consistency"),
]


def test_bad_input_gets_400_naming_the_parameter_and_never_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(mesh: HttpMesh, session: aiohttp.ClientSession) -> None:
        client = await node_with_model(mesh, session, steps=1)
        for params, name in BAD_GETS:
            status, answer = await client.get("/v1/recommend", **params)
            assert (status, answer.get("param")) == (400, name), params
            assert name in answer["error"]
        for raw, name in BAD_POSTS:
            status, answer = await client.send("POST", "/v1/score", raw=raw)
            assert (status, answer.get("param")) == (400, name), raw
        status, answer = await client.get("/no/such/path")
        assert status == 404 and "error" in answer
        status, answer = await client.send("PUT", "/v1/recommend", {})
        assert status == 405 and "error" in answer

        def broken(*_args: Any) -> dict[str, Any]:
            raise RuntimeError("a bug")

        monkeypatch.setattr(queries, "recommend", broken)
        status, answer = await client.get("/v1/recommend", user=1)
        assert (status, answer) == (500, {"error": "internal error"})
        assert await client.get("/healthz") == (200, {"ok": True})

    run_mesh(tmp_path, body)


def test_admin_calls_need_the_token_and_link_faults_take_effect(tmp_path: Path) -> None:
    async def body(mesh: HttpMesh, session: aiohttp.ClientSession) -> None:
        await mesh.start_trainer()
        a1 = await mesh.start_node("a1", "dc-a")
        b1 = await mesh.start_node("b1", "dc-b")
        admin = Client(await mesh.serve(a1), session)
        no_token = Client(await mesh.serve(b1, admin_token=""), session)
        await until(lambda: mesh.members_known(3), "membership")
        fault = {"target": "dc:dc-b", "drop": True}
        for token in ("", "wrong"):
            status, _ = await admin.send("POST", "/admin/link-fault", fault, token=token)
            assert status == 401
        assert (await admin.send("DELETE", "/admin/link-fault"))[0] == 401
        assert (await no_token.send("POST", "/admin/link-fault", fault, token=" "))[0] == 401

        bad = [({"target": "dc:nowhere"}, "target"), ({"target": 5}, "target")]
        bad += [({"target": "x", "delay_ms": -5}, "delay_ms"), ({"target": "x", "drop": 1}, "drop")]
        bad += [
            ({"rate_kbit": -1}, "rate_kbit"),
            ({"target": "dc:nowhere", "rate_kbit": 5}, "target"),
        ]
        bad += [({"rate_kbit": 5, "target": "x", "drop": 1}, "drop")]
        for request, name in bad:
            status, answer = await admin.send("POST", "/admin/link-fault", request, token=TOKEN)
            assert (status, answer.get("param")) == (400, name), request
        assert a1.transport.wan_uplink_bytes_s == 0.0  # a refused call changes nothing
        throttle = {"rate_kbit": 512}  # the WAN uplink alone: no target needed
        status, answer = await admin.send("POST", "/admin/link-fault", throttle, token=TOKEN)
        assert (status, answer) == (200, {"targets": [], "rate_kbit": 512})
        assert a1.transport.wan_uplink_bytes_s == 64_000.0

        status, answer = await admin.send("POST", "/admin/link-fault", fault, token=TOKEN)
        assert status == 200 and answer["targets"] == [b1.transport.addr]
        cut = {"target": "127.0.0.1:", "drop": True}  # every link of a1
        assert (await admin.send("POST", "/admin/link-fault", cut, token=TOKEN))[0] == 200
        mesh.publish_model_step()
        await until(lambda: mesh.converged(["b1"]), "the step on b1")
        await until(lambda: a1.transport.counters.fault_drops > 0, "drops on a1")
        assert a1.replica is not None and a1.replica.store.vector.total_seq() == 0
        assert (await admin.get("/readyz"))[0] == 503

        status, _ = await admin.send("DELETE", "/admin/link-fault", token=TOKEN)
        assert status == 200
        assert a1.transport.wan_uplink_bytes_s == 0.0  # back to mesh.wan_uplink_mbit
        await until(mesh.converged, "a1 caught up after the heal")

    run_mesh(tmp_path, body)


def test_a_query_on_the_replication_loop_makes_it_yield_sooner_for_a_while(
    tmp_path: Path,
) -> None:
    async def body(mesh: HttpMesh, session: aiohttp.ClientSession) -> None:
        await mesh.start_trainer()
        node = await mesh.start_node("a1", "dc-a")
        client = Client(await mesh.serve(node, serving_thread=False), session)
        assert node.transport.drain_budget_s() == DRAIN_BUDGET_S  # no query yet
        await client.get("/healthz")
        assert node.transport.drain_budget_s() == SERVING_DRAIN_BUDGET_S

    run_mesh(tmp_path, body)


def test_queries_on_a_serving_thread_leave_the_replication_loop_alone(tmp_path: Path) -> None:
    async def body(mesh: HttpMesh, session: aiohttp.ClientSession) -> None:
        await mesh.start_trainer()
        node = await mesh.start_node("a1", "dc-a")
        client = Client(await mesh.serve(node), session)
        mesh.publish_model_step()
        await until(mesh.converged, "the step on a1")
        assert (await client.get("/v1/recommend", user=1, k=3))[0] == 200
        assert node.transport.drain_budget_s() == DRAIN_BUDGET_S
        server = mesh.servers[-1]
        assert isinstance(server, ThreadedServer)
        assert server.native_id != threading.get_native_id()  # answered on another thread

    run_mesh(tmp_path, body)


def test_the_owner_loop_changes_the_replica_holding_the_state_lock(tmp_path: Path) -> None:
    """The serving thread reads under ``state_lock``; that is only safe if every change of the
    replica (a delta applied, a timer turn) happens holding it."""

    async def body(mesh: HttpMesh, session: aiohttp.ClientSession) -> None:
        await mesh.start_trainer()
        node = await mesh.start_node("a1", "dc-a")
        client = Client(await mesh.serve(node), session)
        replica = node.replica
        assert replica is not None
        held: list[tuple[str, bool]] = []
        apply, tick = replica.store.apply, replica.tick

        def watched_apply(delta: Any) -> Any:
            held.append(("apply", node.state_lock.locked()))
            return apply(delta)

        def watched_tick(now: float) -> Any:
            held.append(("tick", node.state_lock.locked()))
            return tick(now)

        replica.store.apply = watched_apply  # type: ignore[method-assign]
        replica.tick = watched_tick  # type: ignore[method-assign]
        await until(lambda: mesh.members_known(2), "membership")
        for _ in range(3):
            mesh.publish_model_step()
        await until(mesh.converged, "the steps on a1")
        await until(lambda: {kind for kind, _ in held} == {"apply", "tick"}, "both kinds")
        assert all(locked for _, locked in held), held
        assert (await client.get("/v1/recommend", user=1, k=3))[0] == 200

    run_mesh(tmp_path, body)
